"""A library app as Flask-SQLAlchemy users write one, for the advisor's tests: models
with relationships, a ``User`` model (table ``user``, reserved in PostgreSQL), Jinja
templates that walk relationships lazily, a bind of its own (``audit``), and the usual
``SQLALCHEMY_DATABASE_URI = "sqlite:///library.db"``, which Flask-SQLAlchemy resolves
into the app's instance folder.

Planted, none indexed: ``book.isbn`` (an equality lookup), ``audit_event.actor`` (on
the bind's database).
"""

from __future__ import annotations

import datetime as dt
import random
import typing as t

from flask import Flask
from flask import render_template_string
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Column
from sqlalchemy import DateTime
from sqlalchemy import ForeignKey
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import insert
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import relationship

# As an app on SQLAlchemy 1.4 declares its models (Column), which 2.x runs too; under
# the type checker, mapped_column, whose types it reads.
if t.TYPE_CHECKING:
    from sqlalchemy.orm import mapped_column as col
else:
    col = Column

db = SQLAlchemy()


class User(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = col(Integer, primary_key=True)
    email: Mapped[str] = col(String(120), unique=True, nullable=False)
    last_seen: Mapped[dt.datetime | None] = col(DateTime, nullable=True)


class Author(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = col(Integer, primary_key=True)
    name: Mapped[str] = col(String(80), nullable=False)
    books: Mapped[list[Book]] = relationship("Book", back_populates="author")


class Book(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = col(Integer, primary_key=True)
    isbn: Mapped[str] = col(String(20), nullable=False)
    title: Mapped[str] = col(String(120), nullable=False)
    author_id: Mapped[int] = col(Integer, ForeignKey("author.id"), index=True, nullable=False)
    author: Mapped[Author] = relationship("Author", back_populates="books")


class AuditEvent(db.Model):  # type: ignore[name-defined,misc]
    __bind_key__ = "audit"
    id: Mapped[int] = col(Integer, primary_key=True)
    actor: Mapped[str] = col(String(120), nullable=False)
    action: Mapped[str] = col(String(40), nullable=False)


BOOK_PAGE = "<h1>{{ book.title }}</h1><p>by {{ book.author.name }}</p>"
AUTHORS_PAGE = (
    "{% for a in authors %}<h2>{{ a.name }}</h2>"
    "{% for b in a.books %}<li>{{ b.title }}</li>{% endfor %}{% endfor %}"
)


def create_app(instance_path: str, config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """The library, with querywatch on (its settings in ``config``)."""
    from querywatch import QueryWatch

    app = Flask(__name__, instance_path=instance_path)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///library.db"
    app.config["SQLALCHEMY_BINDS"] = {"audit": "sqlite:///audit.db"}
    app.config["QUERYWATCH_APP_PACKAGES"] = [__name__]
    app.config.update(config or {})
    db.init_app(app)
    QueryWatch(app)

    @app.get("/books/<isbn>")
    def book(isbn: str) -> str:
        found = db.session.execute(db.select(Book).filter_by(isbn=isbn)).scalar_one()
        return render_template_string(BOOK_PAGE, book=found)

    @app.get("/authors")
    def authors() -> str:
        rows = db.session.execute(db.select(Author).limit(5)).scalars().all()
        return render_template_string(AUTHORS_PAGE, authors=rows)

    @app.get("/audit/<actor>")
    def audit(actor: str) -> dict[str, int]:
        events = db.session.execute(db.select(AuditEvent).filter_by(actor=actor)).scalars()
        return {"events": len(events.all())}

    return app


def seed(app: Flask, books: int = 20_000, seed: int = 7) -> None:
    """Authors, books and audit events (``books`` of each), in the instance folder."""
    rnd = random.Random(seed)
    with app.app_context():
        db.create_all()
        authors = max(1, books // 20)
        db.session.execute(
            insert(Author), [{"id": i, "name": f"author {i}"} for i in range(1, authors + 1)]
        )
        db.session.execute(
            insert(Book),
            [
                {
                    "id": i,
                    "isbn": f"978-{i:09d}",
                    "title": f"book {i}",
                    "author_id": rnd.randint(1, authors),
                }
                for i in range(1, books + 1)
            ],
        )
        db.session.execute(
            insert(AuditEvent),
            [
                {
                    "id": i,
                    "actor": f"user{rnd.randint(1, books // 10)}@example.com",
                    "action": "read",
                }
                for i in range(1, books + 1)
            ],
        )
        db.session.commit()
        db.engines["audit"].dispose()
        db.engine.dispose()
