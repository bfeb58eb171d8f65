"""Training throughput benchmark (issue 5). Work in progress: being written."""


def add_arguments(parser):
    parser.add_argument("--device", default="auto")


def main(args) -> int:
    raise NotImplementedError("bench is being written")
