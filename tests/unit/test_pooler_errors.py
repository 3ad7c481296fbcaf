import psycopg
import pytest

from orchestrator.db import one_line, translated
from orchestrator.errors import PreparedStatementsLost, StoreError


@pytest.mark.parametrize("error", [
    psycopg.errors.InvalidSqlStatementName('prepared statement "_pg3_24" does not exist'),
    psycopg.errors.DuplicatePreparedStatement('prepared statement "_pg3_0" already exists'),
])
def test_our_prepared_statement_lost_names_the_flag(error: psycopg.Error) -> None:
    assert one_line(error).endswith("pass --transaction-pooling (or set "
                                    "ORCHESTRATOR_TRANSACTION_POOLING=true)")
    with pytest.raises(PreparedStatementsLost) as caught, translated():
        raise error
    assert str(caught.value).startswith(f"database error: {error}; the DSN goes through a "
                                        "pooler in transaction mode")


def test_a_statement_of_someone_elses_is_an_ordinary_store_error() -> None:
    error = psycopg.errors.InvalidSqlStatementName('prepared statement "mine" does not exist')
    assert one_line(error) == 'prepared statement "mine" does not exist'
    with pytest.raises(StoreError) as caught, translated():
        raise error
    assert not isinstance(caught.value, PreparedStatementsLost)
