"""Licence issuance: the issuing key, signing and storing licences, revocation, the trust and
revocation lists auditors carry, and the printable A4 document."""
