"""ipywidgets that degrade to one static figure when nobody is there to move the sliders."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["static_widgets", "interactive_or_static"]


def static_widgets() -> bool:
    """True when nobody is there to move a slider, so widgets draw one static figure instead: under ``make test``
    and the book build (``COURSE_STATIC_WIDGETS=1``) and under nbgrader (``NBGRADER_EXECUTION``)."""
    return bool(os.environ.get("COURSE_STATIC_WIDGETS") or os.environ.get("NBGRADER_EXECUTION"))


def interactive_or_static(func: Callable[..., Any], **controls: Any) -> Any:
    """``ipywidgets.interactive(func, **controls)``, displayed; headless, ``func`` is called once instead.

    Pass each control as a widget (``ipywidgets.IntSlider(value=3, min=1, max=10)``) or a fixed value.
    Headless, ``func`` receives every control's current ``value``, so the static figure is exactly the
    one a student sees before touching anything, and its return value is returned (useful for asserts).
    """
    import ipywidgets

    if static_widgets():
        values = {name: (c.value if isinstance(c, ipywidgets.ValueWidget) else c) for name, c in controls.items()}
        shown = ", ".join(f"{name}={value!r}" for name, value in values.items())
        print(f"[static figure at {shown}: in JupyterLab this cell shows live controls that redraw it]")
        return func(**values)
    import inspect

    from IPython.display import display

    # a parameter without a control keeps its default, and a plain value stays that value: both are fixed, so
    # ipywidgets never tries to invent a slider for them (it cannot for a default such as ``ax=None``)
    fixed = {
        name: ipywidgets.fixed(p.default)
        for name, p in inspect.signature(func).parameters.items()
        if name not in controls and p.default is not inspect.Parameter.empty
    }
    fixed.update({name: c if isinstance(c, ipywidgets.Widget) else ipywidgets.fixed(c) for name, c in controls.items()})
    widget = ipywidgets.interactive(func, **fixed)
    display(widget)
    return widget
