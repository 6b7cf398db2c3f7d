"""Second-factor storage and administration: atomic replay store, secrets at rest, the
reset command, and the `mfa:` configuration section."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sekisho.config.loader import parse_config
from sekisho.config.problems import InvalidConfig
from sekisho.identity import totp
from sekisho.identity.flow import mfa_required
from sekisho.identity.mfa import TotpFactors
from sekisho.storage import factors, users
from sekisho.storage.audit_log import iter_records
from sekisho.storage.models import Factor
from sekisho.storage.secrets_store import get_or_create_secret

NOW = datetime(2026, 4, 1, tzinfo=UTC)


def _factors(engine):
    return TotpFactors(engine, get_or_create_secret(engine, "mfa"), lambda: NOW)


def _enrolled(engine, name="suzuki"):
    user = users.create_user(engine, name)
    service = _factors(engine)
    factor_id, secret = service.start_enrolment(user.id)
    earlier = TotpFactors(engine, get_or_create_secret(engine, "mfa"),
                          lambda: datetime.fromtimestamp(NOW.timestamp() - 90, UTC))
    assert earlier.confirm(user.id, factor_id, totp.totp(secret, NOW.timestamp() - 90))
    return user, factor_id, secret, service


def test_racing_workers_accept_a_step_once(engine):
    _, factor_id, _, _ = _enrolled(engine)
    step = totp.step_of(NOW.timestamp())
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(factors.accept_step(engine, factor_id, step, NOW))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_two_services_do_not_both_accept_a_code(engine):
    user, _, secret, first = _enrolled(engine)
    second = _factors(engine)
    code = totp.totp(secret, NOW.timestamp())
    assert first.verify(user.id, code) is True
    assert second.verify(user.id, code) is False


def test_secret_is_encrypted_and_bound_to_its_user(engine):
    _, factor_id, secret, service = _enrolled(engine)
    other = users.create_user(engine, "sato")
    with engine.begin() as conn:
        stored = conn.execute(Factor.__table__.select().where(Factor.id == factor_id)).first()
        assert totp.b32(secret) not in stored.secret and secret.hex() not in stored.secret
        # Row swapping: the ciphertext moved to another user does not decrypt.
        conn.execute(Factor.__table__.update().where(Factor.id == factor_id)
                     .values(user_id=other.id))
    assert service.verify(other.id, totp.totp(secret, NOW.timestamp())) is False


def test_recovery_codes_are_hashed_and_single_use(engine):
    user, _, _, service = _enrolled(engine)
    codes = service.new_recovery_codes(user.id)
    assert len(codes) == 10 and len(set(codes)) == 10
    with engine.connect() as conn:
        stored = {row[0] for row in conn.exec_driver_sql("select code_hash from recovery_codes")}
    assert not any(c.replace("-", "") in h for c in codes for h in stored)
    assert service.use_recovery_code(user.id, codes[3]) == (True, 9)
    assert service.use_recovery_code(user.id, codes[3]) == (False, 9)
    assert service.use_recovery_code(users.create_user(engine, "x").id, codes[4])[0] is False
    fresh = service.new_recovery_codes(user.id)  # renewal invalidates the old set
    assert service.use_recovery_code(user.id, codes[4])[0] is False
    assert service.use_recovery_code(user.id, fresh[0])[0] is True


def test_reset_factors_command_is_audited(database_url, engine):
    user, _, _, service = _enrolled(engine)
    service.new_recovery_codes(user.id)
    done = subprocess.run(
        [sys.executable, "-m", "sekisho", "user", "reset-factors", "suzuki",
         "--database-url", database_url], capture_output=True, text=True, timeout=60,
        check=False)
    assert done.returncode == 0, done.stderr
    assert not factors.list_factors(engine, user.id)
    assert factors.unused_recovery_codes(engine, user.id) == 0
    types = [record.event_type for record in iter_records(engine)]
    assert "mfa.factors.reset" in types
    missing = subprocess.run(
        [sys.executable, "-m", "sekisho", "user", "reset-factors", "nobody",
         "--database-url", database_url], capture_output=True, text=True, timeout=60,
        check=False)
    assert missing.returncode != 0


def test_mfa_section_parses_and_checks(tmp_path: Path):
    config = parse_config(
        "tls: {enabled: false}\nmfa:\n  require_remote: true\n"
        "  office_networks: [10.0.0.0/8, 192.168.1.0/24]\n"
        "  require_groups: [admins, finance]\n  flow_lifetime: 2m\n", source="t.yaml",
        base_dir=tmp_path)
    assert config.mfa.flow_lifetime == 120 and config.mfa.require_groups == ("admins",
                                                                               "finance")
    assert mfa_required(config.mfa, "203.0.113.1", ()) is True
    assert mfa_required(config.mfa, "10.9.9.9", ("staff",)) is False
    assert mfa_required(config.mfa, "10.9.9.9", ("finance",)) is True
    assert mfa_required(config.mfa, "not-an-ip", ()) is True  # unknown origin: remote
    with pytest.raises(InvalidConfig) as refused:
        parse_config("tls: {enabled: false}\nmfa:\n  office_networks: [10.0.0.5/8]\n"
                     "  flow_lifetime: 2h\n", source="t.yaml", base_dir=tmp_path)
    fields = {problem.path for problem in refused.value.problems}
    assert ("mfa", "office_networks", 0) in fields and ("mfa", "flow_lifetime") in fields
