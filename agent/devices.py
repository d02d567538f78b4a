"""Each device read bounded in time, whatever the driver does.

Drivers promise that `read()` finishes within their `timeout_s`, but a driver bug or a wedged C
library (pcsclite, a USB-serial adapter) must not freeze status reporting for the whole kiosk.
So the read runs in a daemon thread and the reporter waits at most a budget for it; a read that
overruns is reported as a failure, and no new read is started on that device until the stuck one
returns.
Any exception a driver lets escape becomes a `DriverError`, the one error the reporter handles.
"""

from __future__ import annotations

import threading
from typing import Generic, Protocol, TypeVar

from agent.drivers.base import DriverError

S = TypeVar("S", covariant=True)
T = TypeVar("T")


class Device(Protocol[S]):
    name: str

    def read(self) -> S: ...

    def close(self) -> None: ...


class BoundedDevice(Generic[T]):
    def __init__(self, driver: Device[T], budget_s: float | None = None) -> None:
        self.driver = driver
        self.name = driver.name
        timeout = getattr(driver, "timeout_s", None)
        # A driver may make a few calls per read, each bounded by its timeout_s.
        self.budget_s = budget_s or (2.0 * float(timeout) + 1.0 if timeout else 10.0)
        self._busy: threading.Thread | None = None

    def read(self) -> T:
        if self._busy is not None and self._busy.is_alive():
            raise DriverError(self.name, "the previous read is still running")
        result: list[T] = []
        error: list[BaseException] = []

        def work() -> None:
            try:
                result.append(self.driver.read())
            except BaseException as e:
                error.append(e)

        t = threading.Thread(target=work, name=f"read-{self.name}", daemon=True)
        t.start()
        t.join(self.budget_s)
        if t.is_alive():
            self._busy = t
            raise DriverError(self.name, f"read did not finish in {self.budget_s:g} s")
        self._busy = None
        if error:
            e = error[0]
            if isinstance(e, DriverError):
                raise e
            raise DriverError(self.name, f"driver failed: {type(e).__name__}: {e}") from e
        return result[0]

    def close(self) -> None:
        try:
            self.driver.close()
        except Exception as e:
            raise DriverError(self.name, f"close failed: {e}") from e
