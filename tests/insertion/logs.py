"""Capturing what mmengine's current logger gets, for the insertion tests."""
import contextlib
import logging

from mmengine.logging import MMLogger


@contextlib.contextmanager
def logged_messages():
    """The messages logged through mmengine's current logger inside the block."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
