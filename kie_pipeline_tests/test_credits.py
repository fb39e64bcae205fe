"""Credits and budgets: the pre-flight, max_credits, spend metadata, the account asset, the estimate
command. Everything against the emulator over real HTTP, through Dagster where Dagster is involved;
the emulator counts every createTask, which is what the budget and the pre-flight must hold to."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import yaml
from dagster._core.definitions.observe import observe

from kie_pipeline.account import BALANCE_CHECK, kie_account
from kie_pipeline.cli import main
from kie_pipeline.definitions import ASSETS, build_definitions, build_resources
from kie_pipeline.pipeline.generation import SystemicError, generate_batch
from kie_pipeline.pipeline.manifest import load_manifest, validate_manifest
from kie_pipeline.pipeline.planning import CreditBudget
from kie_pipeline.pipeline.record import RecordStatus, RequestRecord
from kie_pipeline.pipeline.store import TaskStore

from .conftest import make_client
from .pipeline_helpers import FAST_KIE, Pipeline, metadata, write_manifest

REPO = Path(__file__).resolve().parents[1]
PRICE = 18  # the emulator's (and the price table's) credits per nano-banana-pro image at 1K/2K


def creates(emulator) -> int:
    """createTask requests that reached the emulator (refused or not)."""
    return emulator.emulator.snapshot()["create_requests"]


def failure_of(result: dg.ExecuteInProcessResult) -> tuple[str, dict[str, Any]]:
    """The step failure's message and metadata (values unwrapped)."""
    event = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    data = event.step_failure_data
    md = data.user_failure_data.metadata if data.user_failure_data else {}
    return data.error.message, {k: getattr(v, "value", v) for k, v in md.items()}


def many(n: int, batch: str = "many") -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "batch": batch, "prompt": f"picture number {i}"} for i in range(n)]


# -- pre-flight ------------------------------------------------------------------------------------


def test_preflight_short_balance_fails_before_any_create_task(env, emulator, instance) -> None:
    emulator.config.balance = 3 * PRICE - 1  # one credit short of the three animals
    pipe = Pipeline(instance)
    pipe.manifest()
    result = pipe.batch("animals", raise_on_error=False)
    assert not result.success
    message, md = failure_of(result)
    assert f"balance of {3 * PRICE - 1} credits is short of the {3 * PRICE} credits" in message
    assert f"nano-banana-pro: 3 task(s), {3 * PRICE} credits" in message
    assert creates(emulator) == 0
    assert md["fail_codes"] == {"INSUFFICIENT_CREDITS": 3}
    assert md["credits_estimated_needed"] == 3 * PRICE and md["credits_used"] == 0.0


def test_preflight_balance_exactly_enough_creates_every_row(env, emulator, instance) -> None:
    emulator.config.balance = 3 * PRICE
    pipe = Pipeline(instance)
    pipe.manifest()
    md = metadata(pipe.batch("animals"))
    assert md["images_created"] == 3 and creates(emulator) == 3


def test_preflight_counts_only_rows_that_will_be_created(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    pipe.manifest()
    pipe.batch("animals")
    # Everything is reused now: an empty account does not stop a run that creates nothing.
    emulator.config.balance = 0
    md = metadata(pipe.batch("animals"))
    assert md["images_reused"] == 3 and md["credits_estimated_needed"] == 0.0
    # One new row: exactly one image's worth is enough.
    records = pd.read_csv(env / "prompts.csv").to_dict("records")
    write_manifest(str(env / "prompts.csv"), [*records, {"id": "hen", "batch": "animals", "prompt": "A hen"}])
    pipe.manifest()
    emulator.config.balance = PRICE
    md = metadata(pipe.batch("animals"))
    assert md["images_created"] == 1 and md["images_reused"] == 3 and creates(emulator) == 4


def test_preflight_goes_on_when_the_balance_cannot_be_read(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    pipe.manifest()
    # The first request of the run, the balance, is refused with a non-retryable 422.
    emulator.config.faults.force_code, emulator.config.faults.force_count = 422, 1
    result = pipe.batch("cities")
    assert metadata(result)["images_created"] == 2
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("Could not read the account's balance" in m for m in logs)


def test_preflight_short_balance_still_waits_for_tasks_already_paid(emulator, tmp_path) -> None:
    """A task an earlier run created is resumed and copied; only the new rows are held back."""
    rows = validate_manifest(pd.DataFrame(many(3)))
    store = TaskStore(str(tmp_path))
    first = rows.iloc[0].to_dict()

    async def go() -> None:
        async with make_client(emulator) as client:
            task_id = await client.create_task(first["model"], json.loads(first["input_json"]))
            store.save(RequestRecord.for_row(first, None, RecordStatus.SUBMITTED, task_id=task_id))
            await generate_batch(client, store, rows, balance=PRICE)  # two new rows need 2 * PRICE

    with pytest.raises(SystemicError, match="short of the 36 credits") as info:
        asyncio.run(go())
    summary = info.value.summary
    assert (summary.resumed, summary.succeeded, summary.created) == (1, 1, 0)
    assert summary.fail_codes == {"INSUFFICIENT_CREDITS": 2} and creates(emulator) == 1
    assert store.load(first["request_key"]).status is RecordStatus.SUCCESS


# -- max_credits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_credits", "created"),
    [(0, 0), (PRICE - 1, 0), (PRICE, 1), (2 * PRICE, 2), (3 * PRICE - 1, 2)],
    ids=["zero", "less-than-one-row", "one", "two", "just-short-of-three"],
)
def test_budget_creates_exactly_what_fits(env, emulator, instance, max_credits, created) -> None:
    pipe = Pipeline(instance)
    pipe.manifest()
    result = pipe.batch("animals", raise_on_error=False, max_credits=max_credits, submitters=4)
    assert creates(emulator) == created
    assert not result.success
    message, md = failure_of(result)
    assert f"max_credits={max_credits:g} is reached" in message
    assert md["fail_codes"] == {"BUDGET": 3 - created}
    assert md["images_created"] == created == md["images_succeeded"]  # waited for and copied
    assert md["credits_used"] == created * PRICE <= max_credits
    # The created rows are recorded as finished: a rerun with room for the rest creates only those.
    md = metadata(pipe.batch("animals", max_credits=3 * PRICE))
    assert md["images_reused"] == created and md["images_created"] == 3 - created
    assert creates(emulator) == 3


def test_budget_that_fits_every_row_succeeds(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    pipe.manifest()
    md = metadata(pipe.batch("animals", max_credits=3 * PRICE))
    assert md["images_created"] == 3 and md["credits_used"] == 3 * PRICE


def test_budget_holds_with_many_concurrent_submitters(env, emulator, instance) -> None:
    write_manifest(str(env / "prompts.csv"), many(12))
    pipe = Pipeline(instance)
    pipe.manifest()
    result = pipe.batch("many", raise_on_error=False, max_credits=7 * PRICE, submitters=8)
    _, md = failure_of(result)
    assert creates(emulator) == 7 and md["fail_codes"] == {"BUDGET": 5}
    assert emulator.emulator.snapshot()["credits_spent"] == 7 * PRICE


def test_budget_refuses_rows_without_a_price(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    pipe.manifest()
    result = pipe.batch("cities", raise_on_error=False, max_credits=1000, prices={"nano-banana-pro": {}})
    message, md = failure_of(result)
    assert "nano-banana-pro has no price estimate" in message and creates(emulator) == 0
    assert md["credits_unpriced_rows"] == 2
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("2 row(s) to create have no price estimate" in m for m in logs)


def test_budget_stop_is_not_retryable(emulator, tmp_path) -> None:
    rows = validate_manifest(pd.DataFrame(many(3)))

    async def go() -> None:
        async with make_client(emulator) as client:
            await generate_batch(client, TaskStore(str(tmp_path)), rows, max_credits=PRICE)

    with pytest.raises(SystemicError) as info:
        asyncio.run(go())
    assert not info.value.retryable and info.value.summary.created == 1
    assert info.value.summary.fail_codes == {"BUDGET": 2}


def test_budget_reservation_is_returned_only_when_nothing_was_paid() -> None:
    budget = CreditBudget(2 * PRICE)
    assert budget.try_reserve("a", PRICE) and budget.try_reserve("b", PRICE)
    assert not budget.try_reserve("c", PRICE) and budget.refused == 1
    budget.release("b")  # Kie refused b's createTask
    assert budget.try_reserve("c", PRICE) and budget.reserved == 2 * PRICE
    assert CreditBudget(None).try_reserve("x", None)  # no budget: anything goes


# -- spend metadata --------------------------------------------------------------------------------


def test_credits_are_float_metadata_per_materialization(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    pipe.manifest()
    for expected in (3 * PRICE, 0):  # created, then all reused
        result = pipe.batch("animals")
        md = result.asset_materializations_for_node("generated_images")[0].metadata
        for name in ("credits_used", "credits_estimated_needed"):
            assert isinstance(md[name], dg.FloatMetadataValue), name
            assert md[name].value == expected


# -- the account asset -----------------------------------------------------------------------------


@pytest.mark.parametrize(("balance", "passed"), [(999, False), (1000, True), (5000, True)])
def test_kie_account_observes_the_balance_and_warns_below_threshold(
    env, emulator, instance, monkeypatch, balance, passed
) -> None:
    monkeypatch.setenv("KIE_LOW_BALANCE", "1000")
    emulator.config.balance = balance
    result = observe([kie_account], resources=build_resources(**FAST_KIE), instance=instance)
    assert result.success
    obs = instance.fetch_observations(dg.AssetKey("kie_account"), limit=1).records[0]
    value = obs.asset_observation.metadata["balance"]
    assert isinstance(value, dg.FloatMetadataValue) and value.value == balance
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == BALANCE_CHECK and check.passed is passed
    assert check.severity is dg.AssetCheckSeverity.WARN
    assert check.metadata["threshold"].value == 1000


def test_kie_account_fails_clearly_with_a_refused_key(env, emulator, instance, monkeypatch) -> None:
    monkeypatch.setenv("KIE_API_KEY", "not-the-key")
    result = observe(
        [kie_account], resources=build_resources(**FAST_KIE), instance=instance, raise_on_error=False
    )
    assert not result.success
    message, _ = failure_of(result)
    assert "Could not read the Kie account's balance" in message and "not-the-key" not in message


def test_definitions_register_the_account_asset_and_its_check(env) -> None:
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("kie_account") in graph.get_all_asset_keys()
    assert dg.AssetCheckKey(dg.AssetKey("kie_account"), BALANCE_CHECK) in graph.asset_check_keys


# -- the estimate command --------------------------------------------------------------------------


def table_rows(out: str) -> dict[tuple[str, str], list[str]]:
    """The estimate table's rows by (batch, model): create, reuse, resume, expired, credits."""
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells[:1] == ["total"]:
            rows[("total", "")] = cells[1:]
        elif len(cells) >= 7 and cells[2].isdigit():
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_estimate_before_anything_is_generated(env, emulator, capsys) -> None:
    code = main(["estimate", str(env / "prompts.csv"), "--store", str(env / "store")])
    out = capsys.readouterr().out
    assert code == 0
    rows = table_rows(out)
    assert rows[("animals", "nano-banana-pro")] == ["3", "0", "0", "0", str(3 * PRICE)]
    assert rows[("cities", "nano-banana-pro")] == ["2", "0", "0", "0", str(2 * PRICE)]
    assert rows[("total", "")] == ["5", "0", "0", "0", str(5 * PRICE)]
    assert creates(emulator) == 0 and "Balance" not in out


def test_estimate_agrees_with_what_the_run_then_does(env, emulator, instance, capsys) -> None:
    pipe = Pipeline(instance)
    pipe.manifest()
    pipe.batch("animals")
    # A lost durable copy: the row is resumed (its task is downloaded again), not created.
    copy = next((env / "store" / "images").glob("*"))
    copy.unlink()
    before = creates(emulator)
    assert main(["estimate", str(env / "prompts.csv"), "--store", str(env / "store")]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows[("animals", "nano-banana-pro")] == ["0", "2", "1", "0", "0"]
    assert rows[("cities", "nano-banana-pro")] == ["2", "0", "0", "0", str(2 * PRICE)]
    assert creates(emulator) == before  # the estimate created nothing
    md = {b: metadata(pipe.batch(b)) for b in ("animals", "cities")}
    assert (
        md["animals"]["images_created"],
        md["animals"]["images_reused"],
        md["animals"]["images_resumed"],
    ) == (
        0,
        2,
        1,
    )
    assert md["cities"]["images_created"] == 2 and md["cities"]["credits_estimated_needed"] == 2 * PRICE


def test_estimate_prices_and_an_unpriced_model(env, capsys) -> None:
    prices = json.dumps({"nano-banana-pro": {"*": 10}})
    assert (
        main(["estimate", str(env / "prompts.csv"), "--store", str(env / "store"), "--prices", prices]) == 0
    )
    assert table_rows(capsys.readouterr().out)[("total", "")][-1] == "50"
    assert main(["estimate", str(env / "prompts.csv"), "--prices", '{"nano-banana-pro": {}}']) == 0
    out = capsys.readouterr().out
    assert table_rows(out)[("total", "")][-2:] == ["0", "+5?"] and "5 row(s) to create have no price" in out


def test_estimate_leaves_a_damaged_record_where_it_is(env, capsys) -> None:
    key = load_manifest(str(env / "prompts.csv"))["request_key"].iloc[0]
    damaged = env / "store" / "tasks" / f"{key}.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_text('{"key": "truncated')
    assert main(["estimate", str(env / "prompts.csv"), "--store", str(env / "store")]) == 0
    assert table_rows(capsys.readouterr().out)[("total", "")][0] == "5"  # the damaged row: created
    assert damaged.read_text() == '{"key": "truncated' and not (damaged.parent / "corrupt").exists()


def test_estimate_of_an_invalid_manifest_exits_2_naming_row_and_field(env, capsys) -> None:
    bad = env / "bad.csv"
    write_manifest(str(bad), [{"id": "a", "batch": "b", "prompt": "x", "aspect_ratio": "7:7"}])
    assert main(["estimate", str(bad), "--store", str(env / "store")]) == 2
    err = capsys.readouterr().err
    assert "row 1 (id 'a'), field 'aspect_ratio'" in err


def test_estimate_shows_the_balance_only_with_a_key(env, emulator, capsys, monkeypatch) -> None:
    emulator.config.balance = 4 * PRICE
    assert main(["estimate", str(env / "prompts.csv"), "--balance"]) == 0
    out = capsys.readouterr().out
    assert f"Balance: {4 * PRICE} credits (NOT enough for {5 * PRICE})" in out
    monkeypatch.delenv("KIE_API_KEY")
    assert main(["estimate", str(env / "prompts.csv"), "--balance"]) == 0
    captured = capsys.readouterr()
    assert "Balance" not in captured.out and "KIE_API_KEY is not set" in captured.err


@pytest.mark.parametrize("command", [["kie-pipeline"], [sys.executable, "-m", "kie_pipeline.cli"]])
def test_estimate_runs_as_a_command(env, emulator, command) -> None:
    exe = command[0] if command[0] != "kie-pipeline" else str(Path(sys.executable).parent / "kie-pipeline")
    env_vars = {k: v for k, v in os.environ.items() if k != "KIE_API_KEY"}  # no key needed
    done = subprocess.run(
        [exe, *command[1:], "estimate", str(env / "prompts.csv"), "--store", str(env / "store")],
        capture_output=True,
        text=True,
        env=env_vars,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert table_rows(done.stdout)[("total", "")] == ["5", "0", "0", "0", str(5 * PRICE)]
    assert creates(emulator) == 0


# -- the README ------------------------------------------------------------------------------------


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Credits and budgets", 1)[1].split("\n## ", 1)[0]


def test_readme_run_config_example_runs(env, emulator, instance) -> None:
    """The README's run config is valid Dagster run config and its budget holds."""
    [block] = re.findall(r"```yaml\n(.*?)```", readme_section(), re.S)
    run_config = yaml.safe_load(block)
    budget = run_config["ops"]["generated_images"]["config"]["max_credits"]
    pipe = Pipeline(instance)
    pipe.manifest()
    result = dg.materialize(
        ASSETS,
        selection=["generated_images"],
        partition_key="animals",
        resources=pipe.resources,
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
    )
    assert creates(emulator) == min(3, int(budget // PRICE))
    assert result.success is (budget >= 3 * PRICE)


def test_readme_commands_run(env, emulator, capsys, monkeypatch) -> None:
    """Every command line of the section runs (on this test's manifest and store) and exits 0."""
    commands = re.findall(r"^\$ (.+)$", readme_section(), re.M)
    assert len(commands) >= 2, "the section shows its commands as '$ ...' lines"
    for command in commands:
        words = shlex.split(command.replace("data/prompts.csv", str(env / "prompts.csv")))
        words = [w.replace("data/store", str(env / "store")) for w in words]
        while "=" in words[0]:  # VAR=value prefixes: the test's environment already has them
            name = words.pop(0).split("=", 1)[0]
            assert name in os.environ, name
        assert words[0] == "kie-pipeline", command
        assert main(words[1:]) == 0, command
        assert "total" in capsys.readouterr().out
    assert creates(emulator) == 0


def test_a_negative_budget_is_refused_by_the_run_config(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    pipe.manifest()
    result = pipe.batch("animals", raise_on_error=False, max_credits=-1)
    assert not result.success
    assert "max_credits" in failure_of(result)[0] and "greater than or equal to 0" in failure_of(result)[0]
    assert creates(emulator) == 0
