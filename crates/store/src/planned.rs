//! The statements of a planned write (a new aggregate's events and rows, built before anything runs), and how
//! several of them are run together.
//!
//! - On SQLite a batch on the single writer merges the rows its members insert into the same table with the
//!   same columns into multi-row `INSERT`s ([`combine_for_sqlite`]). The merged statements say `OR FAIL`: on
//!   a violated constraint SQLite then stops without undoing the statement's earlier rows, so it keeps no
//!   statement journal (with the default `ABORT` a multi-row statement into a table with a unique key copies
//!   every page it touches first). Nothing is lost by that: any failure in a batch rolls the whole
//!   transaction back, and every member tries again alone.
//! - On PostgreSQL a write that only inserts rows runs as one statement ([`insert_all_for_postgres`]): its
//!   inserts as data-modifying `WITH` parts of a single `INSERT`, which commits on its own. One round trip
//!   instead of four (`BEGIN`, the events, the row, `COMMIT`), and a statement is atomic on its own.

use sea_orm::sea_query::{Alias, Query};
use sea_orm::{
    ActiveModelTrait, ActiveValue, DbBackend, EntityName, EntityTrait, IdenStatic, Iterable, Statement, Value,
};

use flowgate_core::Error;

/// Most rows one merged `INSERT` carries on SQLite. Row counts are split into powers of two up to this, so
/// that a table's merged statements come in five shapes only (the round trips' texts, which the driver
/// caches, are bounded by the batch's members per round trip as well).
const MAX_MERGED_ROWS: usize = 16;

/// One statement of a planned write.
#[derive(Debug, Clone)]
pub enum PlannedStatement {
    /// One row to insert; it may be merged with other rows of the same table and columns.
    Insert(RowInsert),
    /// Any other statement, run as it is.
    Other(Statement),
}

impl PlannedStatement {
    /// The statement on its own, for `backend`.
    pub fn into_statement(self, backend: DbBackend) -> Result<Statement, Error> {
        match self {
            Self::Insert(row) => row.statement(backend),
            Self::Other(statement) => Ok(statement),
        }
    }
}

impl From<RowInsert> for PlannedStatement {
    fn from(row: RowInsert) -> Self {
        Self::Insert(row)
    }
}

impl From<Statement> for PlannedStatement {
    fn from(statement: Statement) -> Self {
        Self::Other(statement)
    }
}

/// A row to insert: its table, the columns it sets and their values, in that order.
#[derive(Debug, Clone)]
pub struct RowInsert {
    table: &'static str,
    columns: Vec<&'static str>,
    values: Vec<Value>,
}

impl RowInsert {
    /// The row `model` inserts: every column it holds a value for, in the entity's column order (as
    /// sea-orm's own insert of it writes).
    pub fn from_model<A: ActiveModelTrait>(mut model: A) -> Self {
        let mut columns = Vec::new();
        let mut values = Vec::new();
        for column in <A::Entity as EntityTrait>::Column::iter() {
            match model.take(column) {
                ActiveValue::Set(value) | ActiveValue::Unchanged(value) => {
                    columns.push(column.as_str());
                    values.push(value);
                }
                ActiveValue::NotSet => {}
            }
        }
        Self { table: A::Entity::default().table_name(), columns, values }
    }

    /// A row of `table` setting `columns` to `values` (as many of each, at least one).
    pub fn new(table: &'static str, columns: Vec<&'static str>, values: Vec<Value>) -> Result<Self, Error> {
        if columns.len() != values.len() || columns.is_empty() {
            return Err(Error::internal("STORE-row-shape", format!("a row of {table} needs one value per column")));
        }
        Ok(Self { table, columns, values })
    }

    /// The single-row `INSERT` for `backend`.
    fn statement(self, backend: DbBackend) -> Result<Statement, Error> {
        let insert = Query::insert()
            .into_table(Alias::new(self.table))
            .columns(self.columns.into_iter().map(Alias::new))
            .values(self.values.into_iter().map(Into::into))
            .map_err(|e| Error::internal("STORE-row-shape", e.to_string()))?
            .to_owned();
        Ok(backend.build(&insert))
    }
}

/// Everything `statements` (the planned writes of a SQLite batch, in arrival order) do, as one SQLite
/// round trip: first the rows, merged per table and columns (tables in the order they first appear, rows in
/// arrival order), then the other statements in arrival order. So a plan's other statements may rely on any
/// row it inserts, and its rows must not rely on its other statements.
pub(crate) fn combine_for_sqlite(statements: impl IntoIterator<Item = PlannedStatement>) -> Statement {
    let mut groups: Vec<Merged> = Vec::new();
    let mut others = Vec::new();
    for statement in statements {
        match statement {
            PlannedStatement::Insert(row) => {
                match groups.iter_mut().find(|g| g.table == row.table && g.columns == row.columns) {
                    Some(group) => group.rows.push(row.values),
                    None => groups.push(Merged { table: row.table, columns: row.columns, rows: vec![row.values] }),
                }
            }
            PlannedStatement::Other(statement) => others.push(statement),
        }
    }
    let mut sql = String::new();
    let mut values = Vec::new();
    for Merged { table, columns, rows } in groups {
        let mut rows = rows.into_iter();
        let mut left = rows.len();
        while left > 0 {
            let chunk = chunk_size(left);
            push_statement(&mut sql, &insert_sql(table, &columns, chunk, &mut Placeholders::Sqlite));
            values.extend(rows.by_ref().take(chunk).flatten());
            left -= chunk;
        }
    }
    for statement in others {
        push_statement(&mut sql, &statement.sql);
        values.extend(statement.values.map(|v| v.0).unwrap_or_default());
    }
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

/// `rows` (a PostgreSQL write that only inserts) as one statement: every insert but the last a
/// data-modifying `WITH` part of the last. PostgreSQL runs each part exactly once, and the whole statement
/// succeeds or fails as one; the parts see the same snapshot, so no row may rely on another of them (a
/// foreign key to a row of the same write). `None` for no rows.
pub(crate) fn insert_all_for_postgres(rows: Vec<RowInsert>) -> Option<Statement> {
    let mut placeholders = Placeholders::Postgres(0);
    let mut parts = Vec::with_capacity(rows.len());
    let mut values = Vec::new();
    for row in rows {
        parts.push(insert_sql(row.table, &row.columns, 1, &mut placeholders));
        values.extend(row.values);
    }
    let last = parts.pop()?;
    let mut sql = String::new();
    for (i, part) in parts.iter().enumerate() {
        sql.push_str(if i == 0 { "WITH " } else { ", " });
        sql.push_str(&format!("w{i} AS ({part})"));
    }
    if !sql.is_empty() {
        sql.push(' ');
    }
    sql.push_str(&last);
    Some(Statement::from_sql_and_values(DbBackend::Postgres, sql, values))
}

/// The rows of one table and column list, in arrival order.
struct Merged {
    table: &'static str,
    columns: Vec<&'static str>,
    rows: Vec<Vec<Value>>,
}

/// How bound values are written: `?` (SQLite), or `$1`, `$2`, … numbered through a whole statement
/// (PostgreSQL; the count so far).
enum Placeholders {
    Sqlite,
    Postgres(usize),
}

impl Placeholders {
    fn next(&mut self) -> String {
        match self {
            Self::Sqlite => "?".to_owned(),
            Self::Postgres(n) => {
                *n += 1;
                format!("${n}")
            }
        }
    }
}

/// The largest power of two up to [`MAX_MERGED_ROWS`] that `left` rows fill.
fn chunk_size(left: usize) -> usize {
    let capped = left.min(MAX_MERGED_ROWS);
    1 << capped.ilog2()
}

fn push_statement(sql: &mut String, statement: &str) {
    if !sql.is_empty() {
        sql.push_str(";\n");
    }
    sql.push_str(statement);
}

/// `INSERT INTO "table" ("a", "b") VALUES (?, ?), (?, ?)` for `rows` rows; on SQLite `INSERT OR FAIL`.
fn insert_sql(table: &str, columns: &[&str], rows: usize, placeholders: &mut Placeholders) -> String {
    let verb = match placeholders {
        Placeholders::Sqlite => "INSERT OR FAIL INTO",
        Placeholders::Postgres(_) => "INSERT INTO",
    };
    let columns_sql = columns.iter().map(|c| quoted(c)).collect::<Vec<_>>().join(", ");
    let mut sql = format!("{verb} {} ({columns_sql}) VALUES ", quoted(table));
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        let row = (0..columns.len()).map(|_| placeholders.next()).collect::<Vec<_>>().join(", ");
        sql.push_str(&format!("({row})"));
    }
    sql
}

fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(table: &'static str, columns: &[&'static str], first: i64) -> RowInsert {
        let values = (0..columns.len()).map(|i| Value::from(first + i64::try_from(i).expect("small"))).collect();
        RowInsert::new(table, columns.to_vec(), values).expect("row")
    }

    #[test]
    fn sqlite_rows_of_a_table_merge_in_power_of_two_chunks_before_other_statements() {
        let other = Statement::from_sql_and_values(DbBackend::Sqlite, "UPDATE t SET a = ?", [Value::from(99_i64)]);
        let mut statements: Vec<PlannedStatement> = Vec::new();
        for i in 0..7 {
            statements.push(row("e", &["a", "b"], 10 * i).into());
            if i == 1 {
                statements.push(other.clone().into());
            }
            statements.push(row("s", &["x"], 100 + i).into());
        }
        // Another column set of the same table is a table of its own for merging.
        statements.push(row("s", &["x", "y"], 500).into());
        let combined = combine_for_sqlite(statements);
        let parts: Vec<&str> = combined.sql.split(";\n").collect();
        assert_eq!(
            parts,
            [
                "INSERT OR FAIL INTO \"e\" (\"a\", \"b\") VALUES (?, ?), (?, ?), (?, ?), (?, ?)",
                "INSERT OR FAIL INTO \"e\" (\"a\", \"b\") VALUES (?, ?), (?, ?)",
                "INSERT OR FAIL INTO \"e\" (\"a\", \"b\") VALUES (?, ?)",
                "INSERT OR FAIL INTO \"s\" (\"x\") VALUES (?), (?), (?), (?)",
                "INSERT OR FAIL INTO \"s\" (\"x\") VALUES (?), (?)",
                "INSERT OR FAIL INTO \"s\" (\"x\") VALUES (?)",
                "INSERT OR FAIL INTO \"s\" (\"x\", \"y\") VALUES (?, ?)",
                "UPDATE t SET a = ?",
            ]
        );
        let values = combined.values.expect("values").0;
        let expected: Vec<Value> = (0_i64..7)
            .flat_map(|i| [10 * i, 10 * i + 1])
            .chain(100..107)
            .chain([500, 501, 99])
            .map(Value::from)
            .collect();
        assert_eq!(values, expected);
    }

    #[test]
    fn chunks_are_powers_of_two_up_to_the_cap() {
        let sizes = |mut left: usize| {
            let mut sizes = Vec::new();
            while left > 0 {
                sizes.push(chunk_size(left));
                left -= chunk_size(left);
            }
            sizes
        };
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(14), [8, 4, 2]);
        assert_eq!(sizes(28), [16, 8, 4]);
        assert_eq!(sizes(40), [16, 16, 8]);
    }

    #[test]
    fn postgres_inserts_become_one_statement_numbered_through() {
        assert!(insert_all_for_postgres(Vec::new()).is_none());
        let alone = insert_all_for_postgres(vec![row("s", &["x"], 1)]).expect("one");
        assert_eq!(alone.sql, "INSERT INTO \"s\" (\"x\") VALUES ($1)");
        let all =
            insert_all_for_postgres(vec![row("e", &["a", "b"], 10), row("e", &["a", "b"], 20), row("s", &["x"], 1)])
                .expect("three");
        assert_eq!(
            all.sql,
            "WITH w0 AS (INSERT INTO \"e\" (\"a\", \"b\") VALUES ($1, $2)), \
             w1 AS (INSERT INTO \"e\" (\"a\", \"b\") VALUES ($3, $4)) \
             INSERT INTO \"s\" (\"x\") VALUES ($5)"
        );
        assert_eq!(all.values.expect("values").0, [10_i64, 11, 20, 21, 1].map(Value::from));
    }

    #[test]
    fn a_row_needs_one_value_per_column_and_renders_alone_for_either_engine() {
        assert!(RowInsert::new("t", vec!["a", "b"], vec![Value::from(1_i64)]).is_err());
        assert!(RowInsert::new("t", vec![], vec![]).is_err());
        let row = RowInsert::new("t", vec!["a"], vec![Value::from(1_i64)]).expect("row");
        let sqlite = PlannedStatement::from(row.clone()).into_statement(DbBackend::Sqlite).expect("sqlite");
        assert_eq!(sqlite.sql, "INSERT INTO \"t\" (\"a\") VALUES (?)");
        let postgres = PlannedStatement::from(row).into_statement(DbBackend::Postgres).expect("postgres");
        assert_eq!(postgres.sql, "INSERT INTO \"t\" (\"a\") VALUES ($1)");
    }
}
