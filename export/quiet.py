"""A build's output is its own: one progress bar per pass and its figures. The third-party
messages that carry no information for a user (without --verbose) are filtered here, each by
what it says, so that anything else those libraries report still reaches the user:

- torch.onnx's exporter: "torchvision is not installed. Skipping torchvision::nms" (and three
  more ops), once per export: torchvision is deliberately not installed, no GLUS graph uses them;
- ONNX Runtime's quantizer: "Please consider to run pre-processing before quantization", once per
  quantized graph: its shape inference is run by export.quantize where it matters;
- transformers' "Loading weights" bar for the CLIP tower, which takes under a second here.
"""

from __future__ import annotations

import contextlib
import logging

DROPPED = {
    "torch.onnx._internal.exporter._registration": ("torchvision is not installed",),
    "": ("Please consider to run pre-processing before quantization",),  # the root logger
}


class _Drop(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


@contextlib.contextmanager
def quiet(verbose: bool = False):
    """Within: the messages above are dropped (nothing is dropped when verbose)."""
    if verbose:
        yield
        return
    filters = []
    for name, starts in DROPPED.items():
        f = _Drop(starts)
        logging.getLogger(name or None).addFilter(f)
        filters.append((name, f))
    bar_was_on = None
    try:
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        yield
    finally:
        for name, f in filters:
            logging.getLogger(name or None).removeFilter(f)
        if bar_was_on:
            hf_logging.enable_progress_bar()
