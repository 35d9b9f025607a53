"""Reversible patches on torch modules: instance ``forward`` wrappers and forward hooks.

A wrapper is set as an *instance* attribute ``module.forward``. It chains to whatever
instance forward was there before (A1111's built-in HyperTile leaves one behind for
good) or, when there was none, to the class forward looked up at call time, so a later
change of the class forward (A1111 swaps it when the attention optimisation changes)
is honoured. ``PatchSet.restore`` puts every module back exactly as it found it.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

Wrap = Callable[[Callable[..., Any], tuple, dict], Any]
_MISSING = object()


@dataclass
class _MethodPatch:
    owner: Any
    name: str
    previous: Any  # the previous instance attribute, or _MISSING
    wrapper: Callable[..., Any]
    active: bool = True


class _Undo:
    def __init__(self, undo: Callable[[], None]) -> None:
        self.remove = undo


class PatchSet:
    """The patches one feature made for one job; ``restore()`` undoes all of them."""

    def __init__(self) -> None:
        self._methods: list[_MethodPatch] = []
        self._handles: list[Any] = []

    def __len__(self) -> int:
        return len(self._methods) + len(self._handles)

    def wrap_forward(self, module: torch.nn.Module, wrap: Wrap) -> None:
        """Make ``module(*a, **kw)`` call ``wrap(inner, a, kw)``, where ``inner`` is the
        forward that would have run without this patch."""
        self.wrap_method(module, "forward", wrap)

    def wrap_method(self, owner: Any, name: str, wrap: Wrap) -> None:
        """Make ``owner.<name>(*a, **kw)`` call ``wrap(inner, a, kw)`` through an instance
        attribute; ``inner`` is the instance attribute that was there before, or the
        class's method looked up at call time."""
        previous = owner.__dict__.get(name, _MISSING)
        record = _MethodPatch(owner, name, previous, None)  # type: ignore[arg-type]

        def inner_method() -> Callable[..., Any]:
            if record.previous is not _MISSING:
                return record.previous
            return types.MethodType(getattr(type(owner), name), owner)

        def method(*args: Any, **kwargs: Any) -> Any:
            if not record.active:
                return inner_method()(*args, **kwargs)
            return wrap(inner_method(), args, kwargs)

        method.__tilesampler_patch__ = True  # type: ignore[attr-defined]
        record.wrapper = method
        setattr(owner, name, method)
        self._methods.append(record)

    def add_handle(self, handle: Any) -> None:
        """Keep a ``torch.utils.hooks.RemovableHandle`` to remove on restore."""
        self._handles.append(handle)

    def add_undo(self, undo: Callable[[], None]) -> None:
        """Run ``undo()`` on restore (newest first, with the hook handles)."""
        self._handles.append(_Undo(undo))

    def restore(self) -> None:
        """Undo every patch, newest first. A wrapper that someone else has wrapped in
        turn is switched to pass-through instead, so their chain keeps working."""
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()
        for record in reversed(self._methods):
            record.active = False
            if record.owner.__dict__.get(record.name) is record.wrapper:
                if record.previous is _MISSING:
                    delattr(record.owner, record.name)
                else:
                    setattr(record.owner, record.name, record.previous)
        self._methods.clear()


def first_tensor_arg(args: tuple, kwargs: dict, names: tuple[str, ...]) -> Optional[torch.Tensor]:
    """The first positional argument, or the first of ``names`` given by keyword."""
    if args:
        return args[0] if isinstance(args[0], torch.Tensor) else None
    for name in names:
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor):
            return value
    return None


def replace_first_arg(args: tuple, kwargs: dict, names: tuple[str, ...],
                      value: torch.Tensor) -> tuple[tuple, dict]:
    """``args``/``kwargs`` with the first tensor argument replaced by ``value``."""
    if args:
        return (value,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    for name in names:
        if name in kwargs:
            kwargs[name] = value
            break
    return args, kwargs
