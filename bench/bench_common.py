"""What the benchmarks share: an SDPA attention forward for ldm's ``CrossAttention``
(ldm's own forward materialises the whole attention matrix, impossible at 2048²), the
machine line, the command line, logging and writing one section of ``RESULTS.md``."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import shlex
import sys
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.nn.attention import SDPBackend, sdpa_kernel


def sdpa_forward(self: torch.nn.Module, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ldm ``CrossAttention.forward`` computed with ``scaled_dot_product_attention`` (same
    projections and heads; SDPA's default scale ``d ** -0.5`` is ldm's)."""
    context = x if context is None else context
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads)
               for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
    attn_mask = None if mask is None else mask.reshape(mask.shape[0], 1, 1, -1).bool()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


@contextlib.contextmanager
def sdpa_attention() -> Iterator[None]:
    """Make every ldm ``CrossAttention`` use :func:`sdpa_forward` with the flash kernel
    only (so a fallback can never materialise the attention matrix); restore afterwards."""
    from ldm.modules.attention import CrossAttention
    original = CrossAttention.__dict__["forward"]
    CrossAttention.forward = sdpa_forward  # type: ignore[method-assign]
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            yield
    finally:
        CrossAttention.forward = original  # type: ignore[method-assign]


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        return match.group(1).strip() if match else platform.processor()
    except OSError:
        return platform.processor() or "unknown"


def machine_line(threads: int) -> str:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"CPU {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads), "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, Python {platform.python_version()}, "
            f"{datetime.datetime.now():%Y-%m-%d %H:%M}; load average at start {load}")


def command_line(script: str, argv: Optional[list[str]] = None) -> str:
    """How the benchmark was started, as a reader would type it in the repository:
    ``python bench/<script> <args>`` (no interpreter path of the machine it ran on)."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "bench/" + os.path.basename(script)] + list(args))


def write_section(path: str, section: str) -> None:
    """Put ``section`` into ``path``, replacing the section under the same heading (its
    first line, up to the next ``## `` heading) or appending it. The file is read just
    before writing and replaced atomically, so other sections written meanwhile stay."""
    heading = section.split("\n", 1)[0]
    text = open(path).read() if os.path.exists(path) else ""
    start = text.find(heading + "\n")
    if start < 0:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section.rstrip("\n") + "\n" + ("" if end < 0 else "\n" + text[end + 1:])
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    os.replace(tmp, path)
