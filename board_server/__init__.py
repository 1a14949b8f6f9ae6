"""The bulletin board gRPC service (board.v1.BoardService) over SQLAlchemy."""
