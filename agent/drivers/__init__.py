"""Device drivers: IPP and ESC/POS printers, PC/SC card readers, and simulators."""

from agent.drivers.base import (
    DriverError,
    PaperLevel,
    Printer,
    PrinterStatus,
    Reader,
    ReaderStatus,
    offline_printer,
)

__all__ = [
    "DriverError",
    "PaperLevel",
    "Printer",
    "PrinterStatus",
    "Reader",
    "ReaderStatus",
    "offline_printer",
]
