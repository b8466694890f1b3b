"""A small library app, not the demo shop, for the CI gate's tests: one N+1 endpoint,
one unindexed filter and one healthy endpoint. The lines the gate must point at carry a
``# gate:`` comment; the tests find them by it."""

from __future__ import annotations

import typing as t

from flask import Flask
from flask import jsonify
from flask import request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Column
from sqlalchemy import ForeignKey
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import relationship
from sqlalchemy.orm import selectinload

from querywatch import QueryWatch

# As an app on SQLAlchemy 1.4 declares its models (Column), which 2.x runs too; under
# the type checker, mapped_column, whose types it reads.
if t.TYPE_CHECKING:
    from sqlalchemy.orm import mapped_column as col
else:
    col = Column

db = SQLAlchemy()


class Author(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "lib_authors"
    id: Mapped[int] = col(Integer, primary_key=True)
    name: Mapped[str] = col(String(80), nullable=False)
    books: Mapped[list[Book]] = relationship("Book", back_populates="author")


class Book(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "lib_books"
    id: Mapped[int] = col(Integer, primary_key=True)
    author_id: Mapped[int] = col(Integer, ForeignKey("lib_authors.id"), index=True, nullable=False)
    title: Mapped[str] = col(String(120), nullable=False)
    isbn: Mapped[str] = col(String(20), nullable=False)  # never indexed
    author: Mapped[Author] = relationship("Author", back_populates="books")


def create_app(database_url: str, *, fixed: bool = False, **config: t.Any) -> Flask:
    app = Flask("gate_app")
    app.config.update(config)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["QUERYWATCH_ADVISE"] = False
    # The gates under test judge counts, plans and N+1s. A slow-query finding (over
    # 100 ms) says how busy the machine was: the fixed app's baseline once held a finding
    # on a busy CI host, and slow queries are the only findings that depend on time.
    app.config["QUERYWATCH_SLOW_QUERY_MS"] = 10_000
    app.config["LIBRARY_FIXED"] = fixed
    db.init_app(app)
    QueryWatch(app)

    @app.get("/authors")
    def authors():  # type: ignore[no-untyped-def]
        query = select(Author).order_by(Author.id)
        if app.config["LIBRARY_FIXED"]:
            query = query.options(selectinload(Author.books))
        rows = db.session.scalars(query).all()  # gate: parents
        out = [{"name": a.name, "books": [b.title for b in a.books]} for a in rows]  # gate: n+1
        return jsonify(out)

    @app.get("/books/by-isbn")
    def by_isbn():  # type: ignore[no-untyped-def]
        isbn = request.args.get("isbn", "")
        rows = db.session.scalars(select(Book).where(Book.isbn == isbn)).all()  # gate: scan
        return jsonify([b.title for b in rows])

    @app.get("/books/<int:book_id>")
    def book(book_id: int):  # type: ignore[no-untyped-def]
        b = db.session.get(Book, book_id)  # gate: healthy
        return jsonify({"title": b.title if b else None})

    return app


def seed(app: Flask, authors: int = 20, books_each: int = 3) -> None:
    """Fresh tables with ``authors`` authors of ``books_each`` books each."""
    with app.app_context():
        db.drop_all()
        db.create_all()
        if app.config["LIBRARY_FIXED"]:
            db.session.execute(text("CREATE INDEX ix_lib_books_isbn ON lib_books (isbn)"))
        n = 0
        for i in range(1, authors + 1):
            a = Author(id=i, name=f"Author {i}")
            for _ in range(books_each):
                n += 1
                a.books.append(Book(id=n, title=f"Book {n}", isbn=f"978-{n:09d}"))
            db.session.add(a)
        db.session.commit()
