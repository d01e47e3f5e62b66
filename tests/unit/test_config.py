from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_the_shipped_example_config_is_valid() -> None:
    config = load_config(ROOT / "config" / "gateway.yaml")
    assert [m.name for m in config.models] == ["sim-small-1b", "sim-large-70b"]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read gateway config"):
        load_config(tmp_path / "absent.yaml")


def test_bad_yaml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "models: [\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: []", "models: List should have at least 1 item"),
        ("models:\n  - name: a\n    endpoints: []", "models.0.endpoints"),
        ("models:\n  - name: a\n    endpoints: ['nohost']", "'nohost' is not host:port"),
        (
            "models:\n  - name: a\n    endpoints: ['h:1']\n    colour: red",
            "models.0.colour: Extra inputs",
        ),
        (
            "models:\n  - {name: a, endpoints: ['h:1']}\n  - {name: b, aliases: [a], endpoints: ['h:2']}",
            "'a' is used twice",
        ),
        (
            "models:\n  - {name: a, endpoints: ['h:1'], default_max_tokens: 10, max_output_tokens: 5}",
            "default_max_tokens cannot exceed",
        ),
        ("models:\n  - {name: a, endpoints: ['h:1'], fallbacks: [b]}", "unknown model 'b'"),
        (
            "models:\n  - {name: a, endpoints: ['h:1'], fallbacks: [a]}",
            "cannot fall back to itself",
        ),
        (
            "models:\n  - {name: a, endpoints: ['h:1']}\nresilience: {retry: {max_attempts: 0}}",
            "resilience.retry.max_attempts",
        ),
    ],
)
def test_invalid_config_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value)
