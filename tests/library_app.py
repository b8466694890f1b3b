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
from sqlalchemy import ForeignKey
from sqlalchemy import String
from sqlalchemy import insert
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class User(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(120), unique=True)
    last_seen: Mapped[dt.datetime | None]


class Author(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    books: Mapped[list[Book]] = relationship(back_populates="author")


class Book(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    isbn: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(String(120))
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"), index=True)
    author: Mapped[Author] = relationship(back_populates="books")


class AuditEvent(db.Model):  # type: ignore[name-defined,misc]
    __bind_key__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    actor: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(40))


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
