"""Failed sign-in counters per throttle key ("account:<name>", "ip:<address>").

The decision of what a failure means (back-off, lockout) is `identity.throttle`, a pure
function; this module only reads and atomically replaces rows. A failure is recorded in one
transaction (row lock on PostgreSQL, the database write lock on SQLite) so that parallel
guesses cannot slip past the counter by racing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from sekisho.errors import StorageError
from sekisho.storage.models import ThrottleState
from sekisho.storage.users import utc


@dataclass(frozen=True, slots=True)
class ThrottleRecord:
    key: str
    failures: int = 0
    last_failure_at: datetime | None = None
    locked_until: datetime | None = None


def _fail(exc: SQLAlchemyError) -> StorageError:
    return StorageError(f"サインイン制限の状態を読み書きできません / throttle storage failed: "
                        f"{type(exc).__name__}")


def read_states(engine: Engine, keys: Iterable[str]) -> dict[str, ThrottleRecord]:
    """State per key; keys without a row get an empty record."""
    wanted = list(dict.fromkeys(keys))
    result = {key: ThrottleRecord(key) for key in wanted}
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(ThrottleState.key, ThrottleState.failures, ThrottleState.last_failure_at,
                       ThrottleState.locked_until).where(ThrottleState.key.in_(wanted))).all()
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    for key, failures, last, locked in rows:
        result[key] = ThrottleRecord(
            key, failures, None if last is None else utc(last),
            None if locked is None else utc(locked))
    return result


def apply_failure(
    engine: Engine, key: str, step: Callable[[ThrottleRecord], ThrottleRecord]
) -> ThrottleRecord:
    """Replace the key's state by `step(old)` atomically; returns the new state."""
    for _attempt in range(3):
        try:
            with engine.begin() as conn:
                row = conn.execute(
                    select(ThrottleState.failures, ThrottleState.last_failure_at,
                           ThrottleState.locked_until)
                    .where(ThrottleState.key == key).with_for_update()).first()
                if row is None:
                    new = step(ThrottleRecord(key))
                    conn.execute(insert(ThrottleState).values(
                        key=key, failures=new.failures, last_failure_at=new.last_failure_at,
                        locked_until=new.locked_until))
                else:
                    old = ThrottleRecord(key, row[0], None if row[1] is None else utc(row[1]),
                                         None if row[2] is None else utc(row[2]))
                    new = step(old)
                    conn.execute(update(ThrottleState).where(ThrottleState.key == key).values(
                        failures=new.failures, last_failure_at=new.last_failure_at,
                        locked_until=new.locked_until))
                return new
        except IntegrityError:
            continue  # another process inserted the row first: read it and step again
        except SQLAlchemyError as exc:
            raise _fail(exc) from None
    raise StorageError("サインイン制限の状態を更新できません / throttle update kept conflicting")


def reset(engine: Engine, key: str) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(delete(ThrottleState).where(ThrottleState.key == key))
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
