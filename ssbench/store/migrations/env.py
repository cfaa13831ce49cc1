"""Alembic environment of the results store.

`open_store` runs migrations programmatically and hands its own connection over in
``config.attributes["connection"]``; a developer's `alembic upgrade head` (root alembic.ini) builds an
engine from ``sqlalchemy.url`` in the ini, else SSBENCH_DB, else the default SQLite file.
"""
from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from ssbench.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copy
        # our SQLite engine emits BEGIN IMMEDIATE itself, so DDL is transactional there too
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    from ssbench.store.engine import resolve_url

    context.configure(
        url=config.get_main_option("sqlalchemy.url") or resolve_url(None),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    from ssbench.store.engine import make_engine, resolve_url

    engine = make_engine(config.get_main_option("sqlalchemy.url") or resolve_url(None))
    try:
        with engine.connect() as conn:
            _configure(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
