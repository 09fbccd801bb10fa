"""Stand-ins for the bank's own systems on the command line: publish candidate events
from a CSV (``fedscreen candidates send``) and read the decisions back
(``fedscreen candidates decisions``)."""
