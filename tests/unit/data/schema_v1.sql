-- The schema of p2pshare 0.1 (user_version 1), for the migration test.
CREATE TABLE node (
	id INTEGER NOT NULL, 
	catalog_version INTEGER NOT NULL, 
	tcp_port INTEGER, 
	node_id VARCHAR(64), 
	announce_wanted_at DOUBLE NOT NULL, 
	updated_at DOUBLE NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE heartbeats (
	role VARCHAR(16) NOT NULL, 
	pid INTEGER NOT NULL, 
	started_at DOUBLE NOT NULL, 
	beat_at DOUBLE NOT NULL, 
	detail VARCHAR NOT NULL, 
	PRIMARY KEY (role)
);
CREATE TABLE files (
	id INTEGER NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	size INTEGER NOT NULL, 
	chunk_size INTEGER NOT NULL, 
	chunk_count INTEGER NOT NULL, 
	first_seen DOUBLE NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (sha256, chunk_size)
);
CREATE TABLE peers (
	id INTEGER NOT NULL, 
	node_id VARCHAR(64) NOT NULL, 
	username VARCHAR NOT NULL, 
	address VARCHAR NOT NULL, 
	tcp_port INTEGER NOT NULL, 
	catalog_version INTEGER NOT NULL, 
	announce_seq INTEGER NOT NULL, 
	catalog_synced INTEGER NOT NULL, 
	first_seen DOUBLE NOT NULL, 
	last_seen DOUBLE NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (node_id)
);
CREATE INDEX ix_peers_last_seen ON peers (last_seen);
CREATE TABLE retired_nodes (
	node_id VARCHAR(64) NOT NULL, 
	retired_at DOUBLE NOT NULL, 
	last_seq INTEGER NOT NULL, 
	replaced BOOLEAN NOT NULL, 
	PRIMARY KEY (node_id)
);
CREATE TABLE uploads (
	id INTEGER NOT NULL, 
	at DOUBLE NOT NULL, 
	peer_address VARCHAR NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	name VARCHAR NOT NULL, 
	chunk_index INTEGER NOT NULL, 
	chunk_offset INTEGER NOT NULL, 
	bytes INTEGER NOT NULL, 
	seconds DOUBLE NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_uploads_at ON uploads (at);
CREATE TABLE chunks (
	file_id INTEGER NOT NULL, 
	chunk_index INTEGER NOT NULL, 
	size INTEGER NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	PRIMARY KEY (file_id, chunk_index), 
	FOREIGN KEY(file_id) REFERENCES files (id) ON DELETE CASCADE
);
CREATE TABLE local_files (
	id INTEGER NOT NULL, 
	root VARCHAR(16) NOT NULL, 
	name VARCHAR NOT NULL, 
	file_id INTEGER NOT NULL, 
	size INTEGER NOT NULL, 
	mtime_ns INTEGER NOT NULL, 
	ctime_ns INTEGER NOT NULL, 
	inode INTEGER NOT NULL, 
	indexed_at DOUBLE NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (root, name), 
	FOREIGN KEY(file_id) REFERENCES files (id)
);
CREATE INDEX ix_local_files_file ON local_files (file_id);
CREATE TABLE holdings (
	id INTEGER NOT NULL, 
	peer_id INTEGER NOT NULL, 
	file_id INTEGER NOT NULL, 
	name VARCHAR NOT NULL, 
	chunks_held INTEGER NOT NULL, 
	bitfield BLOB, 
	PRIMARY KEY (id), 
	UNIQUE (peer_id, file_id, name), 
	FOREIGN KEY(peer_id) REFERENCES peers (id) ON DELETE CASCADE, 
	FOREIGN KEY(file_id) REFERENCES files (id) ON DELETE CASCADE
);
CREATE INDEX ix_holdings_file ON holdings (file_id);
CREATE TABLE bad_peers (
	id INTEGER NOT NULL, 
	address VARCHAR NOT NULL, 
	tcp_port INTEGER NOT NULL, 
	file_id INTEGER NOT NULL, 
	bad_chunks INTEGER NOT NULL, 
	marked_at DOUBLE NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (address, tcp_port, file_id), 
	FOREIGN KEY(file_id) REFERENCES files (id) ON DELETE CASCADE
);
CREATE TABLE downloads (
	id INTEGER NOT NULL, 
	file_id INTEGER NOT NULL, 
	name VARCHAR NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	size INTEGER NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	reason VARCHAR, 
	requested_at DOUBLE NOT NULL, 
	started_at DOUBLE, 
	finished_at DOUBLE, 
	bytes_done INTEGER NOT NULL, 
	bytes_received INTEGER NOT NULL, 
	bad_chunks INTEGER NOT NULL, 
	have BLOB NOT NULL, 
	temp_path VARCHAR, 
	saved_as VARCHAR, 
	PRIMARY KEY (id), 
	FOREIGN KEY(file_id) REFERENCES files (id)
);
CREATE INDEX ix_downloads_status ON downloads (status);
CREATE TABLE download_sources (
	download_id INTEGER NOT NULL, 
	address VARCHAR NOT NULL, 
	tcp_port INTEGER NOT NULL, 
	username VARCHAR NOT NULL, 
	chunks INTEGER NOT NULL, 
	bytes INTEGER NOT NULL, 
	bad_chunks INTEGER NOT NULL, 
	PRIMARY KEY (download_id, address, tcp_port), 
	FOREIGN KEY(download_id) REFERENCES downloads (id) ON DELETE CASCADE
);
PRAGMA user_version=1;
