"""How an :class:`ExecuteResult` reads to an agent: text in output order, images apart.

Pure: no trio, no zmq, no mcp. :mod:`kernelsup.mcp.server` turns a :class:`Rendered` into
MCP content blocks.

The text is what a notebook cell would show, in order: stream text as printed, ``Out[n]:``
for the value of the last expression, the plain traceback of an error, ``[kernelsup: ...]``
notices (output lost, state lost, ...) where they happened; the truncation marker is
already in the stream text where the middle was cut. An image stands in the text as a
``[image N: ...]`` line and travels as its own block. A result that is not ``ok`` ends with
the ``<CODE> <ErrorClass>: <message>`` line the CLI prints (the one rule of
:func:`kernelsup.core.codes.result_error`); every result ends with one
``[kernelsup: ...]`` line naming the status, the kernel and what happened to it.
"""

from __future__ import annotations

from typing import Any

import attrs

from kernelsup.core.codes import result_error
from kernelsup.core.results import ExecuteResult, Output
from kernelsup.mcp import text as plaintext

# MIME types sent as MCP image content (the ones MCP clients and models accept), in order
# of preference when one output carries several.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
# Base64 bytes of images one result may carry, all images together. Images go into the
# model's context: a few plots fit, while common clients refuse a single image past about
# 5 MB. An image past the cap is left out and a line in the text says so.
MAX_IMAGE_BYTES = 2 * 1024 * 1024
# A progress message is one line a client shows while code runs, not the output itself.
PROGRESS_MESSAGE_CHARS = 200


@attrs.frozen
class Image:
    mime_type: str
    data: str  # base64, no whitespace


@attrs.frozen
class Rendered:
    text: str
    images: tuple[Image, ...]
    is_error: bool
    summary: dict[str, Any]


def render_result(
    result: ExecuteResult,
    *,
    max_chars: int | None = None,
    hint: str = "",
    max_image_bytes: int = MAX_IMAGE_BYTES,
) -> Rendered:
    """The text, images and summary of one result; images beyond ``max_image_bytes``
    (base64 bytes, all together) are left out with a line saying so.

    The text is plain (:func:`kernelsup.mcp.text.plain`: no escape sequences) and, given
    ``max_chars``, clipped to it around a marker line ending with ``hint``; the summary's
    ``chars_cut`` counts what the cut left out."""
    text = _Text(max_image_bytes)
    saw_value = saw_error = False
    for out in result.outputs:
        if out.type == "stream":
            text.stream(out.text or "")
        elif out.type in ("execute_result", "display_data"):
            data = out.data or {}
            image = _image_of(data)
            if image is not None:
                text.image(image)
                continue
            plain = data.get("text/plain")
            if not isinstance(plain, str):
                plain = f"<{out.type}: {', '.join(sorted(data)) or 'empty'}>"
            if out.type == "execute_result":
                saw_value = True
                plain = _out_prompt(result) + plain
            text.line(plain)
        elif out.type == "error":
            saw_error = True
            text.line(out.text or "")
        elif out.type == "notice":
            if out.name == "truncated" and result.truncated_bytes:
                continue  # the marker is in the stream text, where the middle was cut
            text.line(out.text or f"[kernelsup: {out.name}]")
    if result.result is not None and not saw_value:
        text.line(_out_prompt(result) + result.result)
    if result.error is not None and not saw_error:
        err = result.error
        text.line("\n".join(err.traceback) or f"{err.ename}: {err.evalue}")
    failure = result_error(result)
    if failure is not None:
        text.line(failure.describe())
    text.line(footer(result))
    summary = {
        key: value
        for key, value in result.to_dict().items()
        if key not in ("stdout", "stderr", "outputs", "result", "error")
    }
    summary["images"] = len(text.images)
    summary["images_omitted"] = text.omitted
    value = plaintext.plain(text.value())
    clipped = (
        plaintext.Clipped(value)
        if max_chars is None
        else plaintext.clip(value, max_chars, hint=hint)
    )
    summary["chars_cut"] = clipped.cut_chars
    return Rendered(clipped.text, tuple(text.images), result.status != "ok", summary)


def footer(result: ExecuteResult) -> str:
    """One line: status, where it ran, how long, and what happened to the kernel."""
    bits = [
        result.status
        if result.code is None or result.code == result.status
        else f"{result.status} ({result.code})"
    ]
    if result.kernel_id:
        bits.append(f"kernel {result.kernel_id}")
    if result.session:
        bits.append(f"session {result.session}")
    if result.status not in ("rejected",):
        bits.append(f"{result.run_s:.2f} s")
    if result.interrupted:
        bits.append("interrupted")
    if result.kernel_restarted:
        bits.append("kernel restarted")
    if result.state_lost:
        bits.append("state lost: variables and imports from earlier calls are gone")
    if result.state_restored:
        bits.append("state restored from a snapshot (the notice above lists what came back)")
    if result.truncated_bytes:
        bits.append(f"output truncated ({result.truncated_bytes} bytes dropped)")
    return f"[kernelsup: {', '.join(bits)}]"


def progress_message(out: Output) -> str | None:
    """A one-line summary of an output for a progress notification, or None."""
    if out.type == "stream":
        lines = [ln for ln in plaintext.plain(out.text or "").splitlines() if ln.strip()]
        text = lines[-1] if lines else None
    elif out.type in ("execute_result", "display_data"):
        data = out.data or {}
        image = _image_of(data)
        plain = data.get("text/plain")
        text = (
            f"<{image.mime_type}>"
            if image is not None
            else plain
            if isinstance(plain, str)
            else f"<{out.type}>"
        )
    elif out.type == "error":
        lines = plaintext.plain(out.text or "").strip().splitlines()
        text = lines[-1] if lines else "error"
    else:
        text = out.text or out.name
    text = plaintext.plain(text or "").strip()
    if not text:
        return None
    if len(text) > PROGRESS_MESSAGE_CHARS:
        text = text[: PROGRESS_MESSAGE_CHARS - 3] + "..."
    return text


class _Text:
    """Stream text as printed, every other part on lines of its own; images kept apart
    within the cap."""

    def __init__(self, max_image_bytes: int) -> None:
        self._parts: list[str] = []
        self._at_line_start = True
        self.images: list[Image] = []
        self.omitted = 0
        self._image_budget = max_image_bytes
        self._cap = max_image_bytes

    def stream(self, text: str) -> None:
        if text:
            self._parts.append(text)
            self._at_line_start = text.endswith("\n")

    def line(self, text: str) -> None:
        if not self._at_line_start:
            self._parts.append("\n")
        self._parts.append(text if text.endswith("\n") else text + "\n")
        self._at_line_start = True

    def image(self, image: Image) -> None:
        size = _size(len(image.data) * 3 // 4)
        if len(image.data) <= self._image_budget:
            self._image_budget -= len(image.data)
            self.images.append(image)
            self.line(f"[image {len(self.images)}: {image.mime_type}, {size}, attached]")
        else:
            self.omitted += 1
            self.line(
                f"[kernelsup: {image.mime_type} image of {size} left out: over the "
                f"{_size(self._cap * 3 // 4)} image cap of one result]"
            )

    def value(self) -> str:
        return "".join(self._parts)


def _image_of(data: dict[str, Any]) -> Image | None:
    for mime in IMAGE_TYPES:
        value = data.get(mime)
        if isinstance(value, str) and value:
            return Image(mime, "".join(value.split()))
    return None


def _out_prompt(result: ExecuteResult) -> str:
    n = result.execution_count
    return f"Out[{n}]: " if n is not None else "Out: "


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    if nbytes < 1024 * 1024:
        return f"{nbytes / 1024:.1f} KiB"
    return f"{nbytes / (1024 * 1024):.1f} MiB"


__all__ = [
    "IMAGE_TYPES",
    "MAX_IMAGE_BYTES",
    "Image",
    "Rendered",
    "footer",
    "progress_message",
    "render_result",
]
