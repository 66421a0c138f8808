-- The item scans of each clip (capture_protocol::item): the `items` of its uploaded
-- notification, a JSON array of {"code": ..., "at": ...} in the order the station read them,
-- `[]` for a clip without any (and for every clip cataloged before this migration, whose
-- notifications had none). Written with the clip row, from the same notification, so that
-- the catalog can be asked which clips hold an item without parsing the notifications.
ALTER TABLE clips ADD COLUMN items jsonb NOT NULL DEFAULT '[]';
