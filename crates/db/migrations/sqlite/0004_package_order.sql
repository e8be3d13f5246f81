-- Packages get an explicit insertion order (`seq`), which both databases
-- can sort by, for versions promoted in the same millisecond.
ALTER TABLE packages ADD COLUMN seq INTEGER;
UPDATE packages SET seq = rowid;
CREATE TRIGGER packages_seq AFTER INSERT ON packages
BEGIN
    UPDATE packages SET seq = NEW.rowid WHERE rowid = NEW.rowid;
END;
