"""Promotion gates: an alias moves to a version only when its measured figures hold up.

``promote(ref, alias, policy)`` compares the candidate with the version now holding the
alias, using the figures ``kilowatt optimize`` recorded (the ``optimize-report.json``
artifact of the run that measured each version):

- eval metric not worse than the holder's by more than ``policy.max_metric_drop``;
- batch-1 p99 latency within ``policy.slo_p99_s`` (when set);
- joules per 1,000 inferences not above the holder's by more than ``policy.energy_margin``.

The alias moves only when every check passes, or when ``force`` is set by an admin. Pass,
refusal and forced moves are all appended to the audit log with the figures, in the same
transaction as the move (or non-move), so the log shows why every alias is where it is.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from kilowatt.errors import Conflict, NotFound, PermissionDenied, SpecError
from kilowatt.store import schema as t
from kilowatt.store.lineage import add_edge, downstream_of
from kilowatt.store.records import ModelVersion
from kilowatt.store.registry import RegistryMixin, _version_id, check_alias

__all__ = ["REPORT_ARTIFACT", "GateDecision", "GatePolicy", "GatesMixin", "VersionFigures"]

#: The artifact of an optimize run that holds every measured variant's figures.
REPORT_ARTIFACT = "optimize-report.json"


@dataclass(frozen=True)
class GatePolicy:
    """What a promotion must satisfy.

    Attributes:
        max_metric_drop: how much worse than the holder the eval metric may be (absolute;
            0.005 is half a point of accuracy).
        slo_p99_s: the batch-1 p99 latency bound; None: no bound.
        energy_margin: how much more energy per inference than the holder is tolerated
            (0.05: 5% more).
    """

    max_metric_drop: float = 0.005
    slo_p99_s: float | None = None
    energy_margin: float = 0.05

    def __post_init__(self) -> None:
        if self.max_metric_drop < 0 or self.energy_margin < 0:
            raise SpecError(
                f"gate budgets must be >= 0 (metric drop {self.max_metric_drop}, energy "
                f"margin {self.energy_margin}); pass e.g. 0.005 and 0.05"
            )


@dataclass(frozen=True)
class VersionFigures:
    """What ``kilowatt optimize`` measured for one version (from its report)."""

    ref: str
    metric_name: str
    higher_is_better: bool
    metric: float
    latency_p99_s: float
    energy_per_1000_j: float
    energy_method: str
    run_id: str


@dataclass(frozen=True)
class GateDecision:
    """The outcome of one promotion attempt (also what the audit event records)."""

    model: str
    alias: str
    candidate: str
    holder: str | None
    passed: bool
    forced: bool
    moved: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    candidate_figures: VersionFigures | None = None
    holder_figures: VersionFigures | None = None

    @property
    def reasons(self) -> list[str]:
        """The failed checks, in words."""
        return [c["detail"] for c in self.checks if not c["passed"]]

    def as_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["reasons"] = self.reasons
        return raw


class GatesMixin(RegistryMixin):
    """Gated alias moves and the measured figures they rest on."""

    def record_optimization(self, parent: ModelVersion, run_id: str) -> None:
        """Link ``parent`` to the optimize run that measured it and registered its variants
        (lineage: parent -> run -> each variant); audited."""
        with self._write() as connection:
            run = self._run_row(connection, run_id)
            add_edge(connection, ("model_version", str(parent.id)), ("run", run.id), "optimized")
            self._audit(connection, "model.optimize", f"model:{parent.ref}", run_id=run.id)

    def version_figures(self, version: ModelVersion) -> VersionFigures | None:
        """The newest figures recorded for ``version``: from the report of the run that
        registered it, else of an optimize run it was the parent of. None when unmeasured."""
        for run_id in self._measuring_runs(version):
            figures = self._figures_in_report(run_id, version.ref)
            if figures is not None:
                return figures
        return None

    def optimize_report(self, version: ModelVersion) -> dict[str, Any] | None:
        """The newest optimize report that measured ``version`` (as parent or variant)."""
        for run_id in self._measuring_runs(version):
            report = self._report(run_id)
            if report is not None:
                return report
        return None

    def _measuring_runs(self, version: ModelVersion) -> list[str]:
        with self._engine.connect() as connection:
            downstream = downstream_of(connection, ("model_version", str(version.id)))
        newest_first = [id_ for kind, id_ in reversed(downstream) if kind == "run"]
        return newest_first + ([version.run_id] if version.run_id else [])

    def _report(self, run_id: str) -> dict[str, Any] | None:
        try:
            with self.open_artifact(run_id, REPORT_ARTIFACT) as handle:  # type: ignore[attr-defined]
                return json.loads(handle.read())  # type: ignore[no-any-return]
        except NotFound:
            return None

    def _figures_in_report(self, run_id: str, ref: str) -> VersionFigures | None:
        report = self._report(run_id)
        if report is None:
            return None
        rows = [r for r in report.get("candidates", []) if r.get("version") == ref]
        if not rows or rows[0].get("metric") is None:
            return None
        row = rows[0]
        return VersionFigures(
            ref=ref,
            metric_name=report["metric_name"],
            higher_is_better=bool(report["higher_is_better"]),
            metric=float(row["metric"]),
            latency_p99_s=float(row["latency_p99_s"]),
            energy_per_1000_j=float(row["energy_per_1000_j"]),
            energy_method=str(row["energy_method"]),
            run_id=run_id,
        )

    def promote(
        self,
        ref: str,
        alias: str,
        policy: GatePolicy | None = None,
        *,
        force: bool = False,
        is_admin: bool = False,
    ) -> GateDecision:
        """Run the gate and move ``alias`` to ``ref`` only if it passes (or on ``force``).

        Returns the decision whether or not the alias moved; both are audited.

        Raises:
            PermissionDenied: ``force`` without the admin role.
            Conflict: the alias moved while the gate was judging (try again).
        """
        check_alias(alias)
        if force and not is_admin:
            raise PermissionDenied(
                f"--force on {ref}@{alias} overrides the promotion gate and needs the admin role"
            )
        policy = policy or GatePolicy()
        candidate = self.get_model_version(ref)  # type: ignore[attr-defined]
        holder = self._alias_holder(candidate.name, alias)
        candidate_figures = self.version_figures(candidate)
        holder_figures = self.version_figures(holder) if holder else None
        checks = _checks(policy, candidate, candidate_figures, holder_figures)
        passed = all(c["passed"] for c in checks)
        decision = GateDecision(
            candidate.name, alias, candidate.ref, holder.ref if holder else None, passed, force,
            passed or force, checks, candidate_figures, holder_figures,
        )  # fmt: skip
        self._record_decision(decision, candidate, holder, policy)
        return decision

    def _alias_holder(self, name: str, alias: str) -> ModelVersion | None:
        try:
            return self.get_model_version(f"{name}@{alias}")  # type: ignore[attr-defined,no-any-return]
        except NotFound:
            return None

    def _record_decision(
        self,
        decision: GateDecision,
        candidate: ModelVersion,
        holder: ModelVersion | None,
        policy: GatePolicy,
    ) -> None:
        action = "model.promote" if decision.passed else "model.promote.refused"
        if decision.forced and not decision.passed:
            action = "model.promote.forced"
        target = f"model:{candidate.name}@{decision.alias}"
        with self._write() as connection:
            current = _holder_version(connection, candidate.name, decision.alias)
            if current != (holder.version if holder else None):
                raise Conflict(
                    f"{target} moved to version {current} while the gate ran; run promote again"
                )
            if decision.moved:
                version_id = _version_id(connection, candidate.name, candidate.version)
                assert version_id is not None
                self._move_alias(  # type: ignore[attr-defined]
                    connection, candidate.name, decision.alias, version_id, candidate.version
                )
            self._audit(  # type: ignore[attr-defined]
                connection,
                action,
                target,
                candidate=decision.candidate,
                holder=decision.holder,
                policy=asdict(policy),
                checks=decision.checks,
                forced=decision.forced,
            )


def _holder_version(connection: sa.Connection, name: str, alias: str) -> int | None:
    return connection.execute(
        sa.select(t.model_versions.c.version)
        .join(t.model_aliases, t.model_aliases.c.version_id == t.model_versions.c.id)
        .where(t.model_aliases.c.name == name, t.model_aliases.c.alias == alias)
    ).scalar()


def _check(name: str, passed: bool, detail: str, **figures: Any) -> dict[str, Any]:
    return {"check": name, "passed": passed, "detail": detail, **figures}


def _checks(
    policy: GatePolicy,
    candidate: ModelVersion,
    mine: VersionFigures | None,
    theirs: VersionFigures | None,
) -> list[dict[str, Any]]:
    if mine is None:
        return [
            _check(
                "measured", False,
                f"{candidate.ref} has no measured figures; run `kilowatt optimize` on it "
                "or on its parent first",
            )
        ]  # fmt: skip
    checks = []
    if policy.slo_p99_s is not None:
        ok = mine.latency_p99_s <= policy.slo_p99_s
        checks.append(
            _check(
                "latency", ok,
                f"p99 {mine.latency_p99_s * 1e3:.3f} ms vs SLO {policy.slo_p99_s * 1e3:.3f} ms",
                candidate=mine.latency_p99_s, bound=policy.slo_p99_s,
            )
        )  # fmt: skip
    if theirs is None:
        return checks or [_check("measured", True, "no current holder to compare with")]
    sign = 1.0 if mine.higher_is_better else -1.0
    drop = sign * (theirs.metric - mine.metric)
    checks.append(
        _check(
            "metric", drop <= policy.max_metric_drop + 1e-12,
            f"{mine.metric_name} {mine.metric:.4f} vs holder {theirs.metric:.4f} "
            f"(drop {drop:+.4f}, budget {policy.max_metric_drop:.4f})",
            candidate=mine.metric, holder=theirs.metric, budget=policy.max_metric_drop,
        )
    )  # fmt: skip
    bound = theirs.energy_per_1000_j * (1.0 + policy.energy_margin)
    checks.append(
        _check(
            "energy", mine.energy_per_1000_j <= bound,
            f"{mine.energy_per_1000_j:.4g} J/1k inferences vs holder "
            f"{theirs.energy_per_1000_j:.4g} (+{policy.energy_margin:.0%} margin)",
            candidate=mine.energy_per_1000_j, holder=theirs.energy_per_1000_j,
            margin=policy.energy_margin, method=mine.energy_method,
        )
    )  # fmt: skip
    return checks
