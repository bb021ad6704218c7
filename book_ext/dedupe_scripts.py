"""Write each <script> once per page.

Scripts that extensions register after the HTML builder started (sphinx-thebe's inline
``const THEBE_JS_URL = ...``, sphinx-togglebutton's selector) came out twice on every page, so the
browser threw "Identifier 'THEBE_JS_URL' has already been declared" (found by tests/browser/).
Two identical script tags are never intended, so drop the repeats.
"""
from __future__ import annotations


def _dedupe(app, pagename, templatename, context, doctree) -> None:
    # Sphinx 7.4 re-adds every script registered after the builder started when it prepares
    # writing, spelling "no file" as "" where the first copy has None, so its own
    # de-duplication (_JavaScript.__eq__) keeps both. Runs early (priority 100) because
    # html-page-context stops at the first handler that returns a template name.
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # the builder's list; Sphinx restores it before the next page


def setup(app):
    app.connect("html-page-context", _dedupe, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
