-- V23: fencing tokens for consumer group partitions (ADR 0029).
--
-- `lease_generation` goes up by one every time a partition changes owner (claimed by
-- another member, or given back). A poll reads the generation with its lease and records
-- its batch as delivered only if the generation is still the same; an ack that names the
-- batch's lease commits only partitions still at that generation. So a poll that outlived
-- its lease, or an ack of a batch from an earlier ownership, touches nothing the current
-- owner was given.
ALTER TABLE consumer_partitions ADD COLUMN lease_generation bigint NOT NULL DEFAULT 0;
