"""API tokens and the job queue."""

from __future__ import annotations

import threading

import pytest

from kilowatt.errors import NotFound, SpecError
from kilowatt.store import Store


def test_tokens_authenticate_until_revoked_and_are_stored_hashed(store: Store) -> None:
    assert not store.has_active_tokens()
    token_id, plaintext = store.create_token("ci", "operator")
    assert plaintext.startswith("kw_") and len(plaintext) > 40
    info = store.authenticate(plaintext)
    assert info is not None and (info.id, info.name, info.role) == (token_id, "ci", "operator")
    assert info.last_used_at is not None
    assert store.list_tokens()[0].last_used_at == pytest.approx(info.last_used_at)
    assert store.authenticate(plaintext + "x") is None
    assert store.has_active_tokens()
    with store.engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT token_sha256 FROM api_tokens").scalar()
    assert plaintext not in str(stored)
    revoked = store.revoke_token(token_id)
    assert revoked.revoked_at is not None and not revoked.active
    assert store.authenticate(plaintext) is None and not store.has_active_tokens()
    with pytest.raises(NotFound, match=f"no active token '{token_id}'"):
        store.revoke_token(token_id)
    with pytest.raises(SpecError, match="role 'root' is not one of viewer, operator, admin"):
        store.create_token("x", "root")  # type: ignore[arg-type]
    assert [e.action for e in store.list_audit()] == ["token.create", "token.revoke"]


def test_jobs_are_claimed_by_priority_then_age(store: Store) -> None:
    low = store.submit_job({"cmd": "a"}, name="low")
    high = store.submit_job({"cmd": "b"}, name="high", priority=5)
    later_high = store.submit_job({"cmd": "c"}, name="later-high", priority=5)
    order = [store.claim_next_job("w1") for _ in range(4)]
    assert [job.id if job else None for job in order] == [high.id, later_high.id, low.id, None]
    claimed = order[0]
    assert claimed is not None
    assert (claimed.status, claimed.attempts, claimed.worker_id) == ("running", 1, "w1")
    assert claimed.spec == {"cmd": "b"} and claimed.started_at is not None


def test_concurrent_workers_claim_each_job_once(store: Store) -> None:
    submitted = {store.submit_job({"n": n}, name=f"j{n}").id for n in range(30)}
    claimed: list[int] = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        while (job := store.claim_next_job(worker)) is not None:
            with lock:
                claimed.append(job.id)

    workers = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(claimed) == sorted(submitted)


def test_update_usage_and_cancel(store: Store) -> None:
    job = store.submit_job({"cmd": "x"}, name="j", max_attempts=3, max_runtime_s=60)
    store.claim_next_job("w")
    store.update_job(job.id, pid=1234, devices=[0, 1], status="queued")
    store.add_job_usage(job.id, time_s=10, energy_j=500, cost_usd=0.01, carbon_gco2e=0.2)
    store.claim_next_job("w")
    done = store.add_job_usage(job.id, time_s=5, energy_j=250, cost_usd=0.005, carbon_gco2e=0.1)
    assert done.attempts == 2 and done.devices == [0, 1] and done.pid == 1234
    assert (done.time_s, done.energy_j) == (pytest.approx(15), pytest.approx(750))
    assert (done.cost_usd, done.carbon_gco2e) == (pytest.approx(0.015), pytest.approx(0.3))
    running = store.request_cancel(job.id)
    assert (running.status, running.cancel_requested) == ("running", True)
    queued = store.submit_job({"cmd": "y"}, name="k")
    assert store.request_cancel(queued.id).status == "cancelled"
    assert [j.id for j in store.list_jobs(status="cancelled")] == [queued.id]
    with pytest.raises(SpecError, match=r"job fields \['colour'\] cannot be updated"):
        store.update_job(job.id, colour="red")
    with pytest.raises(SpecError, match="job status 'done'"):
        store.update_job(job.id, status="done")
    with pytest.raises(NotFound, match="no job 999"):
        store.get_job(999)
