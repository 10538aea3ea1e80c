"""The privacy stage: find personal data, replace it by placeholders, put it back.

::

    detector = PiiDetector()            # one per process; detector.warm() at start-up
    p = Pseudonymizer(detector, frozenset(PII_TYPES), "pseudonymize")   # one per request
    safe = p.protect("Mail maria@example.org")        # "Mail <EMAIL_ADDRESS_1>"
    p.restore("Sent to <EMAIL_ADDRESS_1>.")            # "Sent to maria@example.org."

The pseudonym map lives in the ``Pseudonymizer``, in memory, for one request.
"""

from veil.privacy.detector import PiiDetector
from veil.privacy.pseudonymize import Mode, Pseudonymizer, StreamRestorer
from veil.privacy.span import PII_TYPES, Span

__all__ = ["PII_TYPES", "Mode", "PiiDetector", "Pseudonymizer", "Span", "StreamRestorer"]
