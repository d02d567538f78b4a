"""The layer merge of desired configuration: defaults <- hardware model <- site <- terminal."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import pytest

from agent.config import Intervals
from agent.desired.document import CONFIG_SCHEMA, DocumentError, check_config
from agent.drivers.ipp import IppPrinter
from agent.drivers.pcsc import PcscReader
from fleet.firmware import HardwareModel, load_model
from fleet.server.desired.layers import (
    DEFAULTS,
    check_layer,
    compute,
    explain,
    layers_of,
    merge,
)
from fleet.server.settings import Settings

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware_configs"


@pytest.fixture(scope="module")
def a4() -> HardwareModel:
    return load_model(FIRMWARE / "kx-a4-ipp.toml")


@pytest.fixture(scope="module")
def dual() -> HardwareModel:
    return load_model(FIRMWARE / "kx-a4-dualtray-ipp.toml")


def leaves(config: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in config.items():
        if isinstance(value, dict) and key != "service_hours":
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


# -- defaults ------------------------------------------------------------------------------------


def test_defaults_are_a_complete_valid_config() -> None:
    check_config(DEFAULTS)
    expected = {
        f"{k}.{sub}" if isinstance(rule, dict) else k
        for k, rule in CONFIG_SCHEMA.items()
        for sub in (rule if isinstance(rule, dict) else [None])
    }
    assert leaves(DEFAULTS) == expected


def test_defaults_agree_with_agent_and_server_defaults() -> None:
    s = Settings(dev_mode=True)
    agent = Intervals()
    assert DEFAULTS["status_interval_s"] == agent.status_interval_s == s.status_interval_s
    assert DEFAULTS["poll_interval_s"] == agent.poll_interval_s
    assert DEFAULTS["debounce_s"] == agent.debounce_s
    assert DEFAULTS["paper"]["low_pct"] == s.paper_low_pct
    ipp_timeout = inspect.signature(IppPrinter).parameters["timeout_s"].default
    assert DEFAULTS["printer"]["timeout_s"] == ipp_timeout
    assert (
        DEFAULTS["reader"]["timeout_s"]
        == inspect.signature(PcscReader).parameters["timeout_s"].default
    )
    hours = DEFAULTS["service_hours"]
    assert hours["tz"] == s.service_timezone
    opening = [s.service_hours_start.strftime("%H:%M"), s.service_hours_end.strftime("%H:%M")]
    assert hours["days"] == {d: [opening] for d in ("mon", "tue", "wed", "thu", "fri")}


# -- merge ---------------------------------------------------------------------------------------


def test_later_layers_win_and_sections_merge_key_by_key() -> None:
    low = {"status_interval_s": 30, "paper": {"low_pct": 20, "capacity": 500}}
    mid = {"paper": {"low_pct": 15}, "kiosk": {"notice": "mid"}}
    top = {"status_interval_s": 60, "kiosk": {"locale": "en-US"}}
    assert merge(low, mid, top) == {
        "status_interval_s": 60,
        "paper": {"low_pct": 15, "capacity": 500},
        "kiosk": {"notice": "mid", "locale": "en-US"},
    }
    assert merge() == {} and merge(low) == low


def test_lists_and_scalars_are_replaced_whole() -> None:
    assert merge({"a": [1, 2, 3]}, {"a": [4]}) == {"a": [4]}
    assert merge({"a": {"x": 1}}, {"a": 2}) == {"a": 2}
    assert merge({"a": 2}, {"a": {"x": 1}}) == {"a": {"x": 1}}


def test_service_hours_are_one_value() -> None:
    """A site's hours replace the week below, they do not add a day to it."""
    saturday = {"tz": "Asia/Shanghai", "days": {"sat": [["09:00", "12:00"]]}}
    merged = merge(DEFAULTS, {"service_hours": saturday})
    assert merged["service_hours"] == saturday


def test_none_deletes() -> None:
    base = {"paper": {"low_pct": 20, "capacity": 500}, "kiosk": {"notice": "x"}}
    assert merge(base, {"paper": {"low_pct": None}}) == {
        "paper": {"capacity": 500},
        "kiosk": {"notice": "x"},
    }
    assert merge(base, {"kiosk": None, "nothing": None}) == {"paper": base["paper"]}
    # Nones never reach the result, not even inside a new section.
    assert merge({}, {"paper": {"low_pct": None, "capacity": 300}}) == {"paper": {"capacity": 300}}


def test_unsetting_a_site_override_shows_the_model_value(a4: HardwareModel) -> None:
    site = {"paper": {"low_pct": 35}, "kiosk": {"notice": "本周六照常办公"}}
    assert compute(a4, site, {})["paper"]["low_pct"] == 35
    site = merge(site, {"paper": {"low_pct": None}})  # the operator's patch to the site layer
    assert site == {"paper": {}, "kiosk": {"notice": "本周六照常办公"}}
    assert compute(a4, site, {})["paper"]["low_pct"] == a4.paper_low_pct == 20


def test_merge_never_modifies_or_aliases_its_inputs() -> None:
    defaults = copy.deepcopy(DEFAULTS)
    layer = {"paper": {"low_pct": None}, "kiosk": {"notice": "n"}}
    frozen = copy.deepcopy(layer)
    out = merge(DEFAULTS, layer)
    out["service_hours"]["days"]["mon"].append(["18:00", "19:00"])
    out["kiosk"]["locale"] = "en"
    assert defaults == DEFAULTS and layer == frozen


# -- compute -------------------------------------------------------------------------------------


def test_compute_precedence(a4: HardwareModel, dual: HardwareModel) -> None:
    assert compute(None, {}, {}) == DEFAULTS
    c = compute(dual, {}, {})
    assert c["paper"] == {"low_pct": 15, "capacity": 1100}
    assert c["printer"]["timeout_s"] == 8.0 and c["kiosk"]["idle_timeout_s"] == 180
    assert c["kiosk"]["locale"] == "zh-CN"  # from the defaults
    site = {"kiosk": {"idle_timeout_s": 90, "notice": "午间 12:00-13:30 暂停服务"}}
    terminal = {"kiosk": {"idle_timeout_s": 300}, "status_interval_s": 60}
    c = compute(a4, site, terminal)
    assert c["kiosk"] == {
        "locale": "zh-CN",
        "idle_timeout_s": 300,
        "notice": site["kiosk"]["notice"],
    }
    assert c["status_interval_s"] == 60 and c["paper"]["capacity"] == 500
    check_config(c)


@pytest.mark.parametrize(
    ("site", "terminal", "error"),
    [
        ({"paper": {"low_pct": 150}}, {}, "site.paper.low_pct: 150 is outside 1..99"),
        ({}, {"kiosk": {"colour": "red"}}, "terminal.kiosk.colour: unknown setting"),
        ({}, {"kiosk": {"colour": None}}, "terminal.kiosk.colour: unknown setting"),
        ({"typo": None}, {}, "site.typo: unknown setting"),
        ({}, {"status_interval_s": "30"}, "terminal.status_interval_s: must be an integer"),
        (
            {"service_hours": {"days": {"sat": [["09:00", "12:00"]]}}},
            {},
            "site.service_hours.tz: missing",
        ),
        ({}, [], "terminal: must be an object"),
    ],
)
def test_an_invalid_layer_is_named(a4: HardwareModel, site: Any, terminal: Any, error: str) -> None:
    with pytest.raises(DocumentError) as e:
        compute(a4, site, terminal)
    assert str(e.value) == error


def test_deletions_are_valid_in_a_layer_alone() -> None:
    check_layer({"paper": {"low_pct": None}, "kiosk": None, "service_hours": None}, "site")


def test_a_bad_model_layer_is_named_model(a4: HardwareModel) -> None:
    from dataclasses import replace

    broken = replace(a4, desired={"paper": {"capacity": 0}})
    with pytest.raises(DocumentError, match=r"^model\.paper\.capacity: "):
        compute(broken, {}, {})


# -- explain -------------------------------------------------------------------------------------


def test_explain_names_the_layer_of_every_value(dual: HardwareModel) -> None:
    site = {"kiosk": {"notice": "x"}, "service_hours": copy.deepcopy(DEFAULTS["service_hours"])}
    terminal = {"paper": {"low_pct": None}, "kiosk": {"idle_timeout_s": 30}}
    sources = explain(layers_of(dual, site, terminal, fleet_layer={"kiosk": {"notice": "all"}}))
    assert sources == {
        "debounce_s": "model file",
        "kiosk.idle_timeout_s": "terminal",
        "kiosk.locale": "built-in",
        "kiosk.notice": "site",  # the fleet-wide value is overridden by the site's
        "paper.capacity": "model file",
        "poll_interval_s": "model file",
        "printer.media": "model file",
        "printer.timeout_s": "model file",
        "reader.timeout_s": "model file",
        "service_hours": "site",
        "status_interval_s": "model file",
    }
    assert set(sources) == leaves(compute(dual, site, terminal))
    assert explain(layers_of(None, {}, {})) == dict.fromkeys(sorted(leaves(DEFAULTS)), "built-in")
