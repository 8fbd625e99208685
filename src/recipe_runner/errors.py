"""User-facing errors: a message that names the file, line or config key, never a traceback."""


class RecipeError(Exception):
    """A mistake in a recipe, an override or the data it points to.

    run.py prints these as `error: <message>` and exits with status 2.
    """


class RecipeErrors(RecipeError):
    """Several problems found together, so the user fixes them in one pass."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the recipe has %d problem(s):\n" % len(problems) + "\n".join(f"  - {p}" for p in problems))
