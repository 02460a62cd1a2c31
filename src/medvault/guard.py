"""The service layer's access gate: every protocol asks the policy decision point through here.

HTTP and DIMSE translate a request into (principal, action, study); this module turns a study
into the pseudonymous facts the policy needs and enforces the decision. A study outside the
caller's scope is answered exactly like a study that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from medvault.access.policy import Action, Context, Decision, DecisionPoint, Principal, Resource, enforce
from medvault.archive import StoreCheck
from medvault.errors import Forbidden, NotFound
from medvault.index.store import Index, StudyFacts

MISSING_STUDY = "no such study"
#: What a person signed in with a one-time password must do next (the README's first sign-in).
FIRST_SIGN_IN = (
    "Change it first: POST /auth/password with the form fields username, old_password (the one-time "
    "password), new_password (at least 12 characters) and otp (a current TOTP code); then sign in "
    "again at POST /auth/token with the new password."
)


def resource_of(facts: StudyFacts) -> Resource:
    return Resource(
        study_uid=facts.study_uid,
        patient=facts.patient,
        departments=frozenset({facts.department}) if facts.department else frozenset(),
        referring=frozenset({facts.referring}) if facts.referring else frozenset(),
    )


class Guard:
    def __init__(self, *, pdp: DecisionPoint, index: Index) -> None:
        self.pdp = pdp
        self.index = index

    def _context(self, client: str | None) -> Context:
        return Context(now=datetime.now(UTC), client=client)

    def require(self, principal: Principal | None, action: Action, *, client: str | None = None) -> Decision:
        """May this subject do ``action`` at all (before looking at any study)?"""
        decision = self.pdp.decide(principal, action, None, self._context(client))
        if not decision.allowed and principal is not None and principal.must_change_password:
            raise Forbidden(f"not permitted: {decision.reason}", hint=FIRST_SIGN_IN)
        return enforce(decision)

    def study(
        self, principal: Principal | None, action: Action, study_uid: str, *, client: str | None = None
    ) -> StudyFacts:
        """May this subject do ``action`` on this study? ``NotFound`` if absent or out of scope.
        Returns the study's facts, so that the caller can record the disclosure without asking again."""
        facts = self.index.study_facts(study_uid=study_uid)
        if not facts:
            raise NotFound(MISSING_STUDY)
        (fact,) = facts.values()
        enforce(
            self.pdp.decide(principal, action, resource_of(fact), self._context(client)),
            missing=MISSING_STUDY,
        )
        return fact

    def store_check(self, principal: Principal | None, *, client: str | None = None) -> StoreCheck:
        """The writer's check for :meth:`medvault.archive.Archive.begin_store`: may this subject
        store into the study these facts describe (a stored study, or the one an instance would
        create)? Writes pass the same scope rules as reads; each decision is recorded."""
        context = self._context(client)

        def check(facts: StudyFacts) -> bool:
            return self.pdp.decide(principal, Action.STUDY_STORE, resource_of(facts), context).allowed

        return check

    def visible(
        self, principal: Principal | None, action: Action, *, client: str | None = None
    ) -> Callable[[StudyFacts], bool]:
        """A per-study filter for searches (which hand it each study's facts): only studies the
        subject may see pass."""
        context = self._context(client)

        def check(facts: StudyFacts) -> bool:
            return self.pdp.decide(principal, action, resource_of(facts), context).allowed

        return check
