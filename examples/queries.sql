-- Analyst queries over the bypass tables: hits, the event archive (risk_events), the decision
-- log (risk_decisions) and outcome labels (risk_labels); sinks/clickhouse_schema.py has the schema.
--
-- Run them in the bypass database (`USE bypass`, or clickhouse-client --database bypass)
-- and pass the {name:Type} parameters, e.g.
--   clickhouse-client --database bypass --param_entity=user --param_key=u1 --queries-file ...
-- Rows with an error (the rule failed at run time, e.g. a division by zero) never
-- count: the rollup leaves them out, and queries on risk_hits filter error = ''.
-- Every count is exact by hit_id: the rollup keeps uniqExact states of hit ids, and
-- queries on risk_hits read FINAL (or LIMIT 1 BY hit_id), so retried or re-delivered
-- hits are never counted twice. Each query starts with a "-- name:" line
-- (tests/integration/test_queries_sql.py runs every one of them).

-- name: top_rules_today
-- Rules with the most distinct hits since midnight UTC (live run only: replays and
-- backtests write their own run_id), from the hourly rollup.
SELECT
    rule_id,
    mode,
    uniqExactMerge(hits)         AS hits,
    uniqExactMerge(counted_hits) AS counted,
    uniqExactMerge(entities)     AS entities
FROM risk_hits_hourly
WHERE hour >= toStartOfDay(now('UTC')) AND run_id = 'live'
GROUP BY rule_id, mode
ORDER BY hits DESC, rule_id, mode
LIMIT 20;

-- name: entity_history
-- One entity's hits, newest first, with the feature values each rule read.
-- WHERE entity/key uses the by_entity projection; LIMIT 1 BY hit_id removes copies.
SELECT
    event_time, rule_id, label, mode, score, decision, ruleset_version, run_id,
    event_id, features, features_text, error
FROM risk_hits
WHERE entity = {entity:String} AND key = {key:String}
ORDER BY event_time DESC, hit_id
LIMIT 1 BY hit_id
LIMIT 100;

-- name: shadow_vs_active
-- Per rule and mode over the last {days:UInt32} days (live run only): distinct hits,
-- hits per day, and the share of all flagged events the rule flagged. A shadow rule
-- whose share is close to an active rule's is a candidate for promotion.
SELECT
    rule_id,
    mode,
    count()                                                     AS hits,
    round(count() / {days:UInt32}, 2)                           AS hits_per_day,
    uniqExact(event_id)                                         AS events,
    round(uniqExact(event_id) / any(total.flagged_events), 4)   AS share_of_flagged
FROM risk_hits FINAL
CROSS JOIN
(
    SELECT uniqExact(event_id) AS flagged_events
    FROM risk_hits FINAL
    WHERE event_time >= now64(3, 'UTC') - toIntervalDay({days:UInt32}) AND run_id = 'live' AND error = ''
) AS total
WHERE event_time >= now64(3, 'UTC') - toIntervalDay({days:UInt32}) AND run_id = 'live' AND error = ''
GROUP BY rule_id, mode
ORDER BY rule_id, mode;

-- name: ruleset_version_comparison
-- Two rule-set versions over the same events (e.g. live on v1 and a replay of v2):
-- per rule, events flagged by both, only by the old one, only by the new one.
SELECT
    rule_id,
    countIf(in_old AND in_new)     AS both,
    countIf(in_old AND NOT in_new) AS only_old,
    countIf(in_new AND NOT in_old) AS only_new
FROM
(
    SELECT
        rule_id,
        event_id,
        entity,
        key,
        max(ruleset_version = {old_version:String}) AS in_old,
        max(ruleset_version = {new_version:String}) AS in_new
    FROM risk_hits FINAL
    WHERE ruleset_version IN ({old_version:String}, {new_version:String}) AND error = ''
    GROUP BY rule_id, event_id, entity, key
)
GROUP BY rule_id
ORDER BY rule_id;

-- name: hourly_trend_of_rule
-- One rule over time: distinct hits per hour and mode for the last {hours:UInt32} hours.
SELECT hour, mode, uniqExactMerge(hits) AS hits
FROM risk_hits_hourly
WHERE rule_id = {rule_id:String} AND hour >= toStartOfHour(now('UTC')) - toIntervalHour({hours:UInt32})
GROUP BY hour, mode
ORDER BY hour, mode;

-- name: blocked_now
-- Who is blacklisted right now and why (latest entry per entity, key and label).
SELECT
    entity,
    key,
    label,
    arraySort(arrayDistinct(arrayFlatten(groupArray(rule_ids)))) AS rule_ids,
    max(expires_at)                                              AS blocked_until,
    argMax(ruleset_version, expires_at)                          AS latest_version
FROM risk_blacklist FINAL
WHERE expires_at > now64(3, 'UTC')
GROUP BY entity, key, label
ORDER BY entity, key, label;

-- name: hit_rate_by_rule_and_day
-- Hit rate per rule and day over the last {days:UInt32} days (live run), with its denominator:
-- evaluated = the (event, entity) decisions of the rule's entity kind in risk_decisions,
-- pass decisions without a hit counted 1 / sample_rate each (BYPASS_DECISION_SAMPLE samples
-- them), so it is an estimate; hits are exact (a decision with a hit is always logged).
SELECT
    h.day                                  AS day,
    h.rule_id                              AS rule_id,
    h.mode                                 AS mode,
    h.hits                                 AS hits,
    round(d.evaluated)                     AS evaluated,
    round(h.hits / d.evaluated, 6)         AS hit_rate
FROM
(
    SELECT toDate(event_time) AS day, entity, tupleElement(rm, 1) AS rule_id, tupleElement(rm, 2) AS mode,
           count() AS hits
    FROM risk_decisions FINAL
    ARRAY JOIN arrayConcat(arrayMap(r -> (toString(r), 'active'), rule_ids),
                           arrayMap(r -> (toString(r), 'shadow'), shadow_rule_ids)) AS rm
    WHERE run_id = 'live' AND event_time >= toStartOfDay(now64(3, 'UTC')) - toIntervalDay({days:UInt32})
    GROUP BY day, entity, rule_id, mode
) AS h
INNER JOIN
(
    SELECT toDate(event_time) AS day, entity, sum(1 / sample_rate) AS evaluated
    FROM risk_decisions FINAL
    WHERE run_id = 'live' AND event_time >= toStartOfDay(now64(3, 'UTC')) - toIntervalDay({days:UInt32})
    GROUP BY day, entity
) AS d ON h.day = d.day AND h.entity = d.entity
ORDER BY day, rule_id, mode;

-- name: precision_by_rule_version
-- Per rule-set version and rule (live run): entities flagged (counted hits, or the shadow
-- rule's), those with a bad outcome label (risk_labels, `bypass labels import`: every label
-- but good, legit, benign, false_positive, not_fraud) and the precision. `bypass rules
-- report` adds recall and what shadow rules would add.
SELECT
    ruleset_version,
    rule_id,
    mode,
    uniqExact(entity, key)                                                 AS flagged,
    uniqExactIf(entity, key, (entity, key) IN (
        SELECT toString(entity), key FROM risk_labels FINAL
        WHERE label NOT IN ('good', 'legit', 'benign', 'false_positive', 'not_fraud')
    ))                                                                     AS flagged_bad,
    round(flagged_bad / flagged, 4)                                        AS precision
FROM
(
    SELECT ruleset_version, toString(entity) AS entity, key, tupleElement(rm, 1) AS rule_id,
           tupleElement(rm, 2) AS mode
    FROM risk_decisions FINAL
    ARRAY JOIN arrayConcat(arrayMap(r -> (toString(r), 'active'), rule_ids),
                           arrayMap(r -> (toString(r), 'shadow'), shadow_rule_ids)) AS rm
    WHERE run_id = 'live'
)
GROUP BY ruleset_version, rule_id, mode
ORDER BY ruleset_version, rule_id, mode;

-- name: events_around_hit
-- The archived events (risk_events) of the entity of one hit ({hit_id:String}) within
-- {minutes:UInt32} minutes of it, the hit's own event marked: what led up to the hit.
-- The entity's key is read from the envelope field of its kind (user_id, device_id, ip).
WITH
    (SELECT (toString(entity), key, event_time, event_id) FROM risk_hits
     WHERE hit_id = {hit_id:String} LIMIT 1) AS hit
SELECT
    event_time, event_type, event_id, event_id = tupleElement(hit, 4) AS is_hit_event,
    user_id, device_id, ip, phone, geo_city, attrs
FROM risk_events FINAL
WHERE multiIf(tupleElement(hit, 1) = 'user', user_id, tupleElement(hit, 1) = 'device', device_id,
              tupleElement(hit, 1) = 'ip', ip, '') = tupleElement(hit, 2)
  AND event_time BETWEEN tupleElement(hit, 3) - toIntervalMinute({minutes:UInt32})
                     AND tupleElement(hit, 3) + toIntervalMinute({minutes:UInt32})
ORDER BY event_time, event_id;

-- name: feature_prototype_user_devices_and_orders
-- A feature prototyped in SQL over the event archive before it is written in
-- examples/features.yaml: per user over the last {hours:UInt32} hours, distinct devices and
-- the order amount (attrs.amount of order events), users with at least {min_devices:UInt32}
-- devices. Compare with the rules you would write on it (`bypass rules report`).
SELECT
    user_id,
    count()                                                                AS events,
    uniqExactIf(device_id, device_id != '')                                AS devices,
    sumIf(JSONExtractFloat(attrs, 'amount'), event_type = 'order')         AS order_amount
FROM risk_events FINAL
WHERE event_time >= now64(3, 'UTC') - toIntervalHour({hours:UInt32})
GROUP BY user_id
HAVING devices >= {min_devices:UInt32}
ORDER BY devices DESC, order_amount DESC, user_id
LIMIT 100;
