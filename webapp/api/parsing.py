"""The webargs parser of the API's blueprints: a query parameter is read once, not twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from marshmallow import ValidationError
from webargs.flaskparser import FlaskParser

from webapp.services.errors import InvalidArgument


def refuse_repeated(names: Iterable[str], advice: str = "send it once") -> None:
    """ValidationError (a 422 naming each) for every name that comes more than once."""
    repeated = {name: [f"Sent {count} times: {advice}."]
                for name, count in Counter(names).items() if count > 1}
    if repeated:
        raise ValidationError(repeated)


@contextmanager
def option_errors(location: str, name: str) -> Iterator[None]:
    """An InvalidArgument raised inside (a language the model does not know, a search text
    with nothing to search for) names the argument it refuses in `errors`, by location and
    field as webargs' 422s do (location "video": the video's stored option, which the
    request did not give, was refused)."""
    try:
        yield
    except InvalidArgument as error:
        error.extra.setdefault("errors", {location: {name: [error.message]}})
        raise


class Parser(FlaskParser):
    """webargs reads one value of a parameter given twice and drops the other without a
    word: `?force=true&force=false` forced a run, `?status=failed&status=cancelled` listed
    the failed videos alone. Such a query is a 422 naming the parameter."""

    def load_querystring(self, req, schema):
        refuse_repeated(name for name, _ in req.args.items(multi=True))
        return super().load_querystring(req, schema)
