"""The catalog: built-in data, lookups with suggestions, user overrides, errors that name
file, entry and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from kilowatt.catalog import load_catalog
from kilowatt.errors import CatalogError, CatalogLookupError

REQUIRED_ACCELERATORS = [
    "v100-16gb", "t4", "a10g", "l4", "l40s", "a100-40gb", "a100-80gb", "h100-sxm",
    "h100-pcie", "h200", "b200", "mi250x", "mi300x", "tpu-v4", "tpu-v5e", "tpu-v5p",
    "gaudi2", "trainium", "inferentia2", "cpu",
]  # fmt: skip


def test_builtin_catalog_has_the_required_accelerators_with_sources() -> None:
    catalog = load_catalog()
    names = {a.name for a in catalog.accelerators}
    assert set(REQUIRED_ACCELERATORS) <= names
    for entry in [*catalog.accelerators, *catalog.instances, *catalog.regions]:
        assert entry.source.strip(), entry.name
        assert entry.as_of.year >= 2023, entry.name


def test_common_cloud_instances_are_listed_with_prices() -> None:
    catalog = load_catalog()
    for name, accelerator, count in [
        ("p4d.24xlarge", "a100-40gb", 8),
        ("p5.48xlarge", "h100-sxm", 8),
        ("g5.xlarge", "a10g", 1),
        ("g6.xlarge", "l4", 1),
        ("a2-highgpu-8g", "a100-40gb", 8),
        ("a3-highgpu-8g", "h100-sxm", 8),
        ("g2-standard-4", "l4", 1),
        ("Standard_ND96amsr_A100_v4", "a100-80gb", 8),
        ("Standard_ND96isr_H100_v5", "h100-sxm", 8),
    ]:
        inst = catalog.instance(name)
        assert (inst.accelerator, inst.accelerator_count) == (accelerator, count)
        assert inst.price_usd_per_hour > 0
    clouds = {
        i.cloud for i in catalog.instances if catalog.accelerator(i.accelerator).kind == "cpu"
    }
    assert {"aws", "gcp", "local"} <= clouds  # CPU-only machines exist, incl. this machine


def test_published_datasheet_figures() -> None:
    catalog = load_catalog()
    a100 = catalog.accelerator("a100-80gb")
    assert a100.peak_flops("bf16") == pytest.approx(312e12)
    assert a100.memory_bytes == 80 * 2**30
    assert a100.memory_bandwidth_bytes_per_s == pytest.approx(2.039e12)
    h100 = catalog.accelerator("h100-sxm")
    assert h100.peak_flops("fp8") == pytest.approx(1979e12)
    assert h100.tdp_w == 700


def test_precision_falls_back_to_what_the_part_has() -> None:
    catalog = load_catalog()
    # V100 has no bf16: fp16 tensor cores stand in.
    assert catalog.accelerator("v100-16gb").peak_flops("bf16") == pytest.approx(125e12)
    # A100 has no fp8: the work runs in bf16.
    assert catalog.accelerator("a100-80gb").compute_precision("fp8") == "bf16"
    # The generic CPU core has only fp32.
    assert catalog.accelerator("cpu").peak_flops("bf16") == pytest.approx(0.1e12)


def test_local_machine_entries_for_the_meter() -> None:
    catalog = load_catalog()
    local = catalog.region("local")
    assert local.grid_intensity_gco2e_per_kwh == pytest.approx(480.0)
    assert local.pue == 1.0
    machine = catalog.instance("local-cpu")
    assert machine.price_usd_per_hour == 0
    core = catalog.accelerator(machine.accelerator)
    assert (core.kind, core.tdp_w) == ("cpu", 10)  # watts per core


def test_lookup_suggests_close_names() -> None:
    catalog = load_catalog()
    with pytest.raises(CatalogLookupError, match=r"unknown accelerator 'h100'.*Did you mean h100"):
        catalog.accelerator("h100")
    with pytest.raises(CatalogLookupError, match=r"unknown region 'us-east'.*us-east-1"):
        catalog.region("us-east")
    with pytest.raises(CatalogLookupError, match="unknown instance 'nothing-like-it'"):
        catalog.instance("nothing-like-it")


def test_user_files_override_and_add_entries(tmp_path: Path) -> None:
    user_dir = tmp_path / "catalog"
    user_dir.mkdir()
    (user_dir / "prices.yaml").write_text(
        "default_pue: 1.4\n"
        "regions:\n"
        "  - {name: onprem, cloud: onprem, location: basement, grid_intensity_gco2e_per_kwh: 100,"
        " source: utility bill, as_of: 2025-01-01}\n"
        "instances:\n"
        "  - {name: p4d.24xlarge, cloud: aws, regions: [us-east-1], accelerator: a100-40gb,"
        " accelerator_count: 8, vcpus: 96, memory_gib: 1152, network_gbps: 400,"
        " price_usd_per_hour: 20.0, source: negotiated, as_of: 2025-01-01}\n"
    )
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "instances:\n"
        "  - {name: p4d.24xlarge, cloud: aws, regions: [us-east-1], accelerator: a100-40gb,"
        " accelerator_count: 8, vcpus: 96, memory_gib: 1152, network_gbps: 400,"
        " price_usd_per_hour: 18.0, source: better deal, as_of: 2025-02-01}\n"
    )
    catalog = load_catalog(extra_files=[extra], user_dir=user_dir)
    # The explicit file comes last and wins over the user folder, which wins over built-in.
    assert catalog.instance("p4d.24xlarge").price_usd_per_hour == 18.0
    # A region without its own PUE takes the user file's default.
    assert catalog.region("onprem").pue == 1.4
    assert catalog.default_pue == 1.4
    assert catalog.region("us-east-1").pue == 1.15


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # a negative price names the entry and the field
        (
            "instances:\n  - {name: bad-box, cloud: aws, regions: [us-east-1], accelerator: t4,"
            " accelerator_count: 1, vcpus: 4, memory_gib: 16, network_gbps: 10,"
            " price_usd_per_hour: -1, source: x, as_of: 2025-01-01}\n",
            r"bad.yaml: instances entry 'bad-box': field price_usd_per_hour: .*-1",
        ),
        # a typo in a field name is an unknown field, not silently ignored
        (
            "regions:\n  - {name: r1, cloud: c, location: l, grid_intensity_gco2e_per_kwh: 1,"
            " source: s, as_of: 2025-01-01, pue_typo: 1.2}\n",
            r"regions entry 'r1': field pue_typo: unknown field",
        ),
        # a reference to an accelerator that does not exist
        (
            "instances:\n  - {name: odd, cloud: aws, regions: [us-east-1], accelerator: a100-99gb,"
            " accelerator_count: 1, vcpus: 4, memory_gib: 16, network_gbps: 10,"
            " price_usd_per_hour: 1, source: x, as_of: 2025-01-01}\n",
            r"instance 'odd', field accelerator: unknown accelerator 'a100-99gb'",
        ),
        # an unknown top-level key
        ("gpus: []\n", r"unknown top-level key\(s\) \['gpus'\]"),
        # not YAML at all
        ("accelerators: [\n", "not valid YAML"),
    ],
)
def test_bad_user_entries_name_file_entry_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(CatalogError, match=message):
        load_catalog(extra_files=[bad])


def test_missing_catalog_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"missing\.yaml: cannot read catalog file"):
        load_catalog(extra_files=[tmp_path / "missing.yaml"])
