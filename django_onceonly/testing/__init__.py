"""Testing kit: the store contract and race suites, for the project's stores and yours.

:mod:`django_onceonly.testing.contract` (``StoreContract``) and
:mod:`django_onceonly.testing.races` (``RaceContract``) are base test classes that run
against any store class given to them; they need pytest and pytest-django, which this
package imports only when you import those modules. ``docs/stores.md`` shows how a
third-party store proves itself with them.

:mod:`django_onceonly.testing.kit` proves *your* tasks and views idempotent (a message
delivered twice, a crash after the side effect, the store down, a replayed request);
:mod:`django_onceonly.testing.fixtures` gives it to pytest as ``onceonly_kit``
(``docs/testing-kit.md``).
"""
