"""Runs and projects: create, query, finish, parameters, tags, usage, environment."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import kilowatt
from kilowatt.errors import Conflict, NotFound, SpecError
from kilowatt.store import Store


def test_create_and_get_run_records_params_tags_and_user(store: Store) -> None:
    run = store.create_run("vision", name="baseline", params={"lr": 0.1, "opt": "adam"})
    store.set_tags(run.id, {"team": "ml"})
    got = store.get_run(run.id)
    assert (got.project, got.name, got.status, got.user) == (
        "vision",
        "baseline",
        "running",
        "tester",
    )
    assert got.params == {"lr": "0.1", "opt": "adam"}
    assert got.tags == {"team": "ml"}
    assert got.end_time is None


def test_get_run_accepts_a_unique_prefix(store: Store) -> None:
    run = store.create_run("p")
    assert store.get_run(run.id[:8]).id == run.id


def test_unknown_run_is_a_clear_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match=r"no run 'feedface' .*kilowatt runs list"):
        store.get_run("feedface")
    with pytest.raises(NotFound, match="no run 'nope'"):
        store.log_params("nope", {"a": 1})


def test_params_are_fixed_once_logged(store: Store) -> None:
    run = store.create_run("p", params={"lr": 0.1})
    store.log_params(run.id, {"lr": 0.1, "batch": 32})  # same value again is fine
    with pytest.raises(Conflict, match=r"param 'lr' .* already '0.1', not '0.2'"):
        store.log_params(run.id, {"lr": 0.2})
    assert store.get_run(run.id).params == {"lr": "0.1", "batch": "32"}


def test_list_runs_filters_by_project_tag_param_and_latest_metric(store: Store) -> None:
    a = store.create_run("nlp", params={"lr": 0.1}, tags={"kind": "sweep"})
    b = store.create_run("nlp", params={"lr": 0.01}, tags={"kind": "sweep"})
    c = store.create_run("vision", params={"lr": 0.1})
    store.log_metric_points(a.id, "w", [("loss", 0, 1.0, 0.9), ("loss", 1, 2.0, 0.3)])
    store.log_metric_points(b.id, "w", [("loss", 0, 1.0, 0.2), ("loss", 1, 2.0, 0.6)])

    def ids(**filters: object) -> set[str]:
        return {run.id for run in store.list_runs(**filters)}  # type: ignore[arg-type]

    assert ids(project="nlp") == {a.id, b.id}
    assert ids(params={"lr": 0.1}) == {a.id, c.id}
    assert ids(project="nlp", tags={"kind": "sweep"}, params={"lr": 0.01}) == {b.id}
    # the latest value (highest step) counts: a ends at 0.3, b at 0.6
    assert ids(metrics=[("loss", "<", 0.5)]) == {a.id}
    assert ids(metrics=[("loss", ">=", 0.6)]) == {b.id}
    with pytest.raises(SpecError, match="metric operator '~'"):
        store.list_runs(metrics=[("loss", "~", 1.0)])


def test_finish_run_sets_status_and_end_time_and_is_audited(store: Store) -> None:
    run = store.create_run("p")
    finished = store.finish_run(run.id, "failed")
    assert finished.status == "failed"
    assert finished.end_time is not None and finished.end_time >= finished.start_time
    actions = [(e.action, e.target) for e in store.list_audit()]
    assert ("run.create", f"run:{run.id}") in actions
    assert ("run.finish", f"run:{run.id}") in actions
    with pytest.raises(SpecError, match="run status 'done'"):
        store.finish_run(run.id, "done")  # type: ignore[arg-type]


def test_usage_figures_are_recorded(store: Store) -> None:
    run = store.create_run("p")
    store.set_run_usage(
        run.id,
        time_s=12.5,
        energy_j=3600.0,
        cost_usd=0.02,
        carbon_gco2e=0.4,
        method="measured-rapl",
    )
    got = store.get_run(run.id)
    assert (got.time_s, got.energy_j, got.cost_usd, got.carbon_gco2e, got.usage_method) == (
        pytest.approx(12.5),
        pytest.approx(3600.0),
        pytest.approx(0.02),
        pytest.approx(0.4),
        "measured-rapl",
    )


def test_start_run_context_finishes_or_fails_the_run(store: Store) -> None:
    with kilowatt.start_run(project="ctx", params={"seed": 1}, store=store) as run:
        run.log_metrics({"loss": 0.5}, step=0)
    assert store.get_run(run.id).status == "finished"
    assert store.metric_history(run.id, "loss").value.tolist() == [0.5]

    with pytest.raises(RuntimeError), kilowatt.start_run(project="ctx", store=store) as failing:
        raise RuntimeError("boom")
    assert store.get_run(failing.id).status == "failed"


def test_attached_writer_does_not_finish_the_run(store: Store) -> None:
    with kilowatt.start_run(project="ddp", store=store) as owner:
        with kilowatt.start_run(run_id=owner.id, store=store, writer="rank1") as rank1:
            rank1.log_metrics({"loss": 1.0}, step=0)
        assert store.get_run(owner.id).status == "running"
        owner.log_metrics({"loss": 2.0}, step=0)
    assert store.get_run(owner.id).status == "finished"
    # both ranks' points at step 0 are kept, one per writer
    assert sorted(store.metric_history(owner.id, "loss").value.tolist()) == [1.0, 2.0]


def test_run_records_git_commit_and_uncommitted_diff_hash(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    (repo / "train.py").write_text("print(1)\n")
    subprocess.run([*git, "add", "train.py"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "first"], cwd=repo, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.chdir(repo)

    with kilowatt.start_run(project="git", store=store) as clean:
        pass
    (repo / "train.py").write_text("print(2)\n")
    with kilowatt.start_run(project="git", store=store) as dirty:
        pass

    clean_env, dirty_env = store.get_run(clean.id).environment, store.get_run(dirty.id).environment
    assert clean_env["git_commit"] == head and clean_env["git_diff_sha256"] is None
    assert dirty_env["git_commit"] == head
    assert dirty_env["git_diff_sha256"] is not None and len(dirty_env["git_diff_sha256"]) == 64
    assert dirty_env["python_version"].count(".") == 2 and dirty_env["host"]


def test_text_with_a_nul_character_is_refused_on_every_database(store: Store) -> None:
    # PostgreSQL cannot hold NUL in text; SQLite could, but then the two would differ.
    with pytest.raises(SpecError, match=r"text 'a\\x00b' contains a NUL character .*remove it"):
        store.create_run("a\x00b")
    with pytest.raises(SpecError, match=r"NUL character"):
        store.create_run("ok", params={"lr": "0.1\x00"})
    with pytest.raises(SpecError, match=r"NUL character"):
        store.list_runs(tags={"team": "\x00"})
    assert store.list_runs() == []  # no run half-written
    assert "run.create" not in {event.action for event in store.list_audit()}
