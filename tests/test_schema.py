"""The record schema is the one owner of record kinds and keys: the README's table says the same, the committed
records use only its keys, and the rules that read records (unit keys, failures) follow its kinds."""
import json
import re
from pathlib import Path

import pytest

from nin_bench.store import records, schema

ROOT = Path(__file__).parents[1]


def _readme_rows() -> dict[str, str]:
    """The README's "What gets measured" table: record kind -> its keys cell."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| record kind (`stage`) |"):]
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[2]
    return rows


def test_readme_table_lists_every_record_kind_in_order() -> None:
    assert tuple(_readme_rows()) == schema.RECORD_KINDS


@pytest.mark.parametrize("kind", schema.RECORD_KINDS)
def test_readme_keys_of_each_kind_are_the_schema_keys(kind: str) -> None:
    rows = _readme_rows()
    # the setting keys of timing / layer_timing rows are named in the "per variant" column
    named = set(re.findall(r"`([a-z0-9_<>]+)`", rows[kind]))
    setting = {"timing": set(schema.SETTING_KEYS), "layer_timing": set(schema.LAYER_SETTING_KEYS)}.get(kind, set())
    assert named | setting == set(schema.KEYS[kind])


def test_readme_names_every_shared_column() -> None:
    text = (ROOT / "README.md").read_text()
    para = text[text.index("Every record also carries the shared columns"):].split("\n\n")[0]
    assert set(re.findall(r"`([a-z0-9_]+)`", para)) == set(schema.SHARED_COLUMNS)


def test_key_families_match_their_members_only() -> None:
    assert schema.key_allowed("profile", "params_block3") and schema.key_allowed("profile", "macs_head")
    assert schema.key_allowed("train", "time_to_acc_85_s") and not schema.key_allowed("train", "time_to_acc_85")
    assert schema.key_allowed("timing", "variant") and not schema.key_allowed("timing", "test_acc")
    assert not schema.key_allowed("nonsense", "params")


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (ROOT / "results").glob("*/records.jsonl")))
def test_committed_records_use_only_schema_keys(folder: str) -> None:
    """What the suite wrote (and the report reads) is what the schema names: no key spelled elsewhere."""
    config = (ROOT / "results" / folder / "config.resolved.yaml").read_text()
    grid_tails = set(re.findall(r"^  [a-z_]+\.([a-z_0-9]+):", config, re.M))  # extra grid axes become columns
    rows = [json.loads(line) for line in (ROOT / "results" / folder / "records.jsonl").read_text().splitlines()]
    unknown = {(r["stage"], k) for r in rows for k in r if not schema.key_allowed(r["stage"], k)
               and k not in grid_tails}
    assert unknown == set()
    assert {r["stage"] for r in rows} <= set(schema.RECORD_KINDS)


def test_unit_rules_follow_the_schema_kinds() -> None:
    epoch = {"variant": "v", "stage": "train_epoch", "seed": 1, "epoch": 2}
    layer = {"variant": "v", "stage": "layer_timing", "status": "error", "error": "x", "batch_size": 4}
    assert records.unit_key(epoch) == ("v", "train", 1) and records.unit_key(layer) == ("v", "timing", None)
    assert not records.is_unit_failure(layer)  # a failed per-layer timing is a setting's result
    failed = schema.error_record({"variant": "v", "stage": "train", "status": "ok", "error": None}, "E: x", seed=3)
    assert failed == {"variant": "v", "stage": "train", "status": "error", "error": "E: x", "seed": 3}
    assert records.is_unit_failure(failed)


def test_timing_round_records_keep_one_row_per_round() -> None:
    """Rounds of one setting are different measurements: the latest-record rule must not fold them into one."""
    base = {"variant": "v", "stage": "timing_round", "status": "ok", "mode": "forward", "batch_size": 8,
            "dtype": "fp32", "channels_last": False, "compile": False, "ms_median": 1.0}
    rows = [base | {"round": r} for r in range(5)] + [base | {"round": 4, "ms_median": 2.0}]
    kept = records.latest_per_key(rows)
    assert [r["round"] for r in kept] == [0, 1, 2, 3, 4] and kept[-1]["ms_median"] == 2.0
    assert records.unit_key(base) == ("v", "timing", None) and not records.is_unit_failure(base | {"status": "error"})


def test_records_from_before_head_dropout_read_with_the_old_meaning(tmp_path) -> None:
    """Before `head_dropout` existed `dropout` switched the trunk's and the FC head's dropout together: an old FC
    record reads with its `dropout` as its head dropout, a GAP record with 0.0; today's records stay as written."""
    from nin_bench.store.folder import ResultsDir

    old_fc = {"variant": "v", "head": "fc", "dropout": 0.5, "width": 1.0, "stage": "train"}
    old_gap = {"variant": "g", "head": "gap", "dropout": 0.5, "width": 1.0, "stage": "train"}
    new_fc = {"variant": "n", "head": "fc", "dropout": 0.5, "head_dropout": 0.0, "stage": "train"}
    assert list(schema.upgrade_record(old_fc)) == ["variant", "head", "dropout", "head_dropout", "width", "stage"]
    assert schema.upgrade_record(old_fc)["head_dropout"] == 0.5 and schema.upgrade_record(old_gap)["head_dropout"] == 0.0
    assert schema.upgrade_record(new_fc) is new_fc and schema.upgrade_record({"stage": "x"}) == {"stage": "x"}
    rd = ResultsDir(tmp_path)
    rd.append_records([old_fc, new_fc])
    assert [r["head_dropout"] for r in rd.read_records()] == [0.5, 0.0]
    assert "head_dropout" not in json.loads(rd.records.read_text().splitlines()[0])  # the file is never rewritten


def test_committed_records_read_with_head_dropout() -> None:
    from nin_bench.store.folder import ResultsDir

    for folder in sorted(p.parent for p in (ROOT / "results").glob("*/records.jsonl")):
        rows = ResultsDir(folder).read_records()
        raw = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines() if line.strip()]
        assert len(rows) == len(raw) and all("head_dropout" in r for r in rows), folder.name
        # records written before head_dropout existed read with the old meaning; newer ones stay as written
        assert all(r["head_dropout"] == (r["dropout"] if r["head"] == "fc" else 0.0) if "head_dropout" not in w
                   else r["head_dropout"] == w["head_dropout"] for r, w in zip(rows, raw)), folder.name
