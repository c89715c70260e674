"""Events in: the event contract, Kafka I/O, the embedded broker, stream workers, training examples out."""

from streamproc.errors import InvalidEvent, RecoError
from streamproc.settings import Settings

__all__ = ["InvalidEvent", "RecoError", "Settings"]
