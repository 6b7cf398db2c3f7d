"""Device trust: the internal CA, device certificates and (later) enrolment and posture."""
