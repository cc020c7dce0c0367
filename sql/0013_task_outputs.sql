-- Files a one-shot task asks back ("outputs": patterns), and those its run brought back (base64).
ALTER TABLE tasks ADD COLUMN outputs jsonb NOT NULL DEFAULT '[]';
ALTER TABLE tasks ADD COLUMN artifacts jsonb;
