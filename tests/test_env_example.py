"""``.env.example`` documents every setting, and its values are the defaults."""

from __future__ import annotations

import re
from pathlib import Path

from wapool.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def _documented() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^# (WAPOOL_[A-Z0-9_]+)=(.*)$", text, flags=re.M))


def test_every_setting_is_documented() -> None:
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert set(_documented()) == fields


def test_documented_values_are_valid_defaults(tmp_path: Path) -> None:
    values = {
        k: v
        for k, v in _documented().items()
        if v and k not in ("WAPOOL_DATABASE_URL", "WAPOOL_STATE_DIR")
    }
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    from_example = load_settings(env_file, state_dir=tmp_path)
    defaults = load_settings(None, state_dir=tmp_path)
    assert from_example == defaults
