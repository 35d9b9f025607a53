"""The hidden controls through which the page's script asks for a plan (javascript/): a
spec of the option keys, a request box it fills with JSON and a button it clicks. Shared by
the accordion and the Script tab; gradio is imported only when a script builds its UI."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence


def hidden(component: Any) -> Any:
    """A control the page's script uses but the user never sees, and the WebUI does not
    save in ui-config.json."""
    component.do_not_save_to_config = True
    return component


def plan_controls(elem_id: Callable[[str], str], name: str, keys: Iterable[str],
                  answer: Callable[[str], Any], outputs: Sequence[Any]) -> None:
    """Add the hidden row; a click runs ``answer(request JSON)`` into ``outputs``."""
    import gradio as gr
    with gr.Row(elem_classes=["tilesampler-hidden"]):
        gr.HTML(f'<div data-keys="{" ".join(keys)}"></div>', elem_id=elem_id("plan_spec"))
        request = hidden(gr.Textbox("", label=f"{name} plan request", elem_id=elem_id("plan_request"),
                                    elem_classes=["tilesampler-hidden"]))
        button = hidden(gr.Button(f"{name} plan", elem_id=elem_id("plan_button"),
                                  elem_classes=["tilesampler-hidden"]))
    button.click(fn=answer, inputs=[request], outputs=list(outputs), show_progress=False, queue=False)
