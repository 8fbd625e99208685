"""Interpolations in shared files, read with OmegaConf's own grammar (not a regex).

`${oc.env:VAR}` copies an environment variable into the config (and so into every config file
and W&B); a regex over the text can be talked around, e.g. by a resolver name that is itself
an interpolation, `${oc.${x}:VAR}` with `x: env`. The value is parsed the way OmegaConf will
parse it when it resolves, and every resolver call in the parse tree must name one of the
pure resolvers below, spelt out: a resolver name built from an interpolation is refused.
"""

from __future__ import annotations

from omegaconf.errors import GrammarParseError
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser as G
from omegaconf.grammar_parser import parse

# read only the config and the clock; never the environment, files or new interpolations
PURE_RESOLVERS = ("now", "oc.select", "oc.dict.keys", "oc.dict.values")


def _contexts(tree):
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(getattr(node, "children", None) or [])


def resolver_problem(text: str) -> str | None:
    """Why `text` may not stand in a shared file, or None. Plain text and `${a.b}` references pass."""
    if "${" not in text:
        return None
    try:
        tree = parse(text)
    except GrammarParseError as exc:
        return f"is not a valid interpolation ({str(exc).splitlines()[0]})"
    for node in _contexts(tree):
        if isinstance(node, G.ResolverNameContext):
            if node.interpolation():
                return (f"builds a resolver name from an interpolation (`${{{node.getText()}:...}}`): shared files "
                        f"name their resolvers plainly (allowed: {', '.join(PURE_RESOLVERS)})")
            name = node.getText()
            if name not in PURE_RESOLVERS:
                return (f"uses `${{{name}:...}}`: shared files may not call resolvers that read the environment or "
                        f"files or build new interpolations (allowed: {', '.join(PURE_RESOLVERS)})")
    return None


def references(text: str, at: list[str]) -> list[str]:
    """The config keys `text` (the value at key path `at`) interpolates, as absolute dotted paths:
    `${paths.output_dir}` -> paths.output_dir; `${..name}` at a.b.c -> a.name. Keys built from
    interpolations are skipped (their parts are listed)."""
    if "${" not in str(text):
        return []
    try:
        tree = parse(str(text))
    except GrammarParseError:
        return []
    out = []
    for node in _contexts(tree):
        if isinstance(node, G.InterpolationNodeContext) and not any(k.interpolation() for k in node.configKey()):
            body = node.getText()[2:-1]
            dots = len(body) - len(body.lstrip("."))
            parent = at[:-1] if dots else []
            parent = parent[: len(parent) - (dots - 1)] if dots > 1 else parent
            out.append(".".join([*parent, *[p for p in body[dots:].replace("[", ".").replace("]", "").split(".")
                                            if p]]))
    return out
