"""`sekisho serve --demo` runs from its configuration FILE: written on the first start, kept
as edited on later ones (a demo app whose port is taken moves, and the file follows), and
written afresh with `--demo-reset` — so SIGHUP and the console's editor work on the demo."""

from __future__ import annotations

from pathlib import Path

from sekisho.config.demo import DEMO_FILE, DEMO_TESTS_FILE
from sekisho.config.loader import load_config
from sekisho.console.admin.config_check import policy_tests_file
from sekisho.demo.setup import prepare_demo


def test_the_demo_runs_from_its_file_and_keeps_an_edit(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    first = prepare_demo(data, None, port=18443, admin_port=19100, connector=False)
    file = data / DEMO_FILE
    assert first.config_path == str(file) and first.config.source == str(file)
    assert first.config.digest == load_config(file).digest
    assert policy_tests_file(file) == data / DEMO_TESTS_FILE and policy_tests_file(file).is_file()
    assert first.banner is not None and "written now" in first.banner(first.config)

    edited = file.read_text(encoding="utf-8").replace(
        '"お知らせ / News"', '"お知らせ（編集済み）/ News (edited)"')
    file.write_text(edited, encoding="utf-8")
    # The first start's demo apps still hold their ports in this process: the kept file's
    # apps move to free ports, and only those lines of the file change.
    again = prepare_demo(data, None, port=18443, admin_port=19100, connector=False)
    news = {r.id: r for r in again.config.routes}["news"]
    assert news.title == "お知らせ（編集済み）/ News (edited)"
    before = {r.id: r.to for r in first.config.routes}
    assert all(before[r.id] != r.to for r in again.config.routes)
    assert again.config_path == str(file)
    assert again.banner is not None and "kept as edited" in again.banner(again.config)

    reset = prepare_demo(data, None, port=18443, admin_port=19100, reset=True,
                         connector=False)
    assert {r.id: r for r in reset.config.routes}["news"].title == "お知らせ / News"
