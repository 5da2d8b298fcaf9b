"""The one switch of the attention implementation of every :class:`~botnet.layers.MHSA2d` in a model."""

from __future__ import annotations

from types import TracebackType

from torch import nn

from botnet.layers.attention import MHSA2d, check_attn_impl


class AttnImplSetting:
    """What :func:`set_attn_impl` returns: the change is made already; as a context manager it is undone on exit.

    ``previous`` maps each changed layer to the ``attn_impl`` it had before.
    """

    def __init__(self, previous: dict[MHSA2d, str]) -> None:
        self.previous = previous

    def restore(self) -> None:
        """Give every layer back the ``attn_impl`` it had before the switch."""
        for layer, impl in self.previous.items():
            layer.attn_impl = impl

    def __enter__(self) -> AttnImplSetting:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.restore()


def set_attn_impl(module: nn.Module, impl: str) -> AttnImplSetting:
    """Set ``attn_impl`` on every :class:`MHSA2d` in ``module`` (``module`` itself included).

    ``set_attn_impl(model, "chunked")`` is permanent; ``with set_attn_impl(model, "explicit"): ...`` restores each
    layer's previous value when the block ends (also on an exception).

    Args:
        module: a model or a single layer.
        impl: ``"auto"``, ``"explicit"``, ``"sdpa"``, ``"chunked"`` or ``"flex"``.

    Raises:
        ValueError: ``impl`` is none of these (nothing is changed).
    """
    check_attn_impl(impl)
    previous = {layer: layer.attn_impl for layer in module.modules() if isinstance(layer, MHSA2d)}
    for layer in previous:
        layer.attn_impl = impl
    return AttnImplSetting(previous)
