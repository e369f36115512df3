"""`python -m streams worker [faust options]`: run a stream worker with the settings from the environment.

The worker runs without Faust's web server unless --with-web is given: several workers share a host, and
health is visible from the consumer group and the marts."""

import sys

from streams.worker import create_app


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["worker"] and not any(a in ("--with-web", "--without-web") for a in args):
        args.append("--without-web")
    app = create_app(declare_topics=args[:1] == ["worker"])
    sys.argv = [sys.argv[0], *args]
    app.main()


if __name__ == "__main__":
    main()
