-- A copy's rows go with the copy through a trigger instead of a foreign key: the key checked
-- every row the mirror writes against store_copies, some 40 % of PostgreSQL's time in a backlog
-- drain (docs/performance.md). Every writer of store_rows (the mirror, import) writes or locks
-- the company's store_copies row first, in the same transaction, so no row can lack its copy.
ALTER TABLE store_rows DROP CONSTRAINT store_rows_company_id_fkey;

CREATE FUNCTION store_rows_follow_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM store_rows WHERE company_id = OLD.company_id;
    RETURN OLD;
END $$;

CREATE TRIGGER store_rows_follow_copy AFTER DELETE ON store_copies
    FOR EACH ROW EXECUTE FUNCTION store_rows_follow_copy();
