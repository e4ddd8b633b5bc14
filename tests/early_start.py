"""A pytest plugin (loaded by the test modules that need it, through pytest_plugins): once the
session's tests are collected, it calls start_early(config) of every test module that has a
selected test, so that their slow shared work (render.yml for every strategy, the vLLM probe,
the wheel's build and install) runs in the background beside the tests of the modules before
them, instead of one piece after the other. The fixtures that need the work wait for it (and
start it themselves when it was not started); nothing starts for a module whose tests are all
deselected (e.g. `pytest -m sandbox`), nor with --collect-only.
"""
from __future__ import annotations


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    started = set()
    for item in session.items:
        module = getattr(item, "module", None)
        if module is None or module.__name__ in started:
            continue
        started.add(module.__name__)
        start = getattr(module, "start_early", None)
        if start is not None:
            start(session.config)
