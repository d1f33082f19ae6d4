"""The bottom layer: what every other package may import (errors, range checks, collectives,
tensor helpers). It imports nothing else of selfsup."""
