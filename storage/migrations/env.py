"""Alembic environment.

``Store.migrate`` passes its connection in ``config.attributes["connection"]``
(inside the transaction it opened). From the command line, give the URL::

    alembic -c storage/alembic.ini -x url=sqlite:///prover.db upgrade head
"""

from alembic import context
from sqlalchemy import create_engine

from storage.schema import Base

config = context.config
connection = config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("give the database URL: alembic -x url=... (or sqlalchemy.url)")
    engine = create_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
