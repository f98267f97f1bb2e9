"""Griffe extension for the API reference: the Sphinx roles in prefrl's docstrings become links.

The code's docstrings use reST roles (``:class:`~prefrl.run.RunDir```, ``:func:`ask```), which Markdown
would show as literal text. Each becomes an autorefs cross-reference to the object it names, resolved the
way a reader would resolve it: a dotted path as written, a bare name in the scope of the object whose
docstring it is (its class, then its module, following imports). A name that resolves to nothing the API
pages render (a private helper, another library) is shown as code without a link, never as a broken one.
"""

from __future__ import annotations

import html
import re
from typing import Any

from griffe import Alias, Extension, Object

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|const):`(?P<short>~?)(?P<target>[^`]+)`")


class SphinxRoles(Extension):
    def on_object(self, *, obj: Object, loader: Any, **kwargs: Any) -> None:
        if obj.docstring is None or ":" not in obj.docstring.value:
            return
        value = ROLE.sub(lambda m: _link(obj, loader, m), obj.docstring.value)
        obj.docstring.value = re.sub(r"::\n\n", ":\n\n", value)  # reST literal-block marker


def _link(obj: Object, loader: Any, m: re.Match[str]) -> str:
    target = m["target"].strip().lstrip(".")
    shown = target.rsplit(".", 1)[-1] if m["short"] else target
    code = f"<code>{html.escape(shown)}</code>"
    path = _resolve(obj, loader, target)
    if path is None or any(part.startswith("_") for part in path.split(".")):
        return code
    return f'<autoref identifier="{path}" optional>{code}</autoref>'


def _resolve(obj: Object, loader: Any, target: str) -> str | None:
    """The full path of ``target`` as seen from ``obj``'s docstring, or None."""
    head, _, rest = target.partition(".")
    scopes = [obj] if obj.is_class or obj.is_module else []
    scopes += [p for p in (obj.parent, obj.module) if p is not None]
    for scope in scopes:
        member = scope.members.get(head)
        if member is None:
            continue
        base = member.target_path if isinstance(member, Alias) else member.path
        return f"{base}.{rest}" if rest else base
    try:
        return loader.modules_collection[target].path
    except KeyError:
        return target if "." in target else None
