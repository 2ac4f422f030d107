-- Statements the `sql` command tests use (never used by the service).

-- name: placeholder_corner_cases(label)^
-- Colons that are not placeholders stay as they are: a cast, `:=`, text in quotes,
-- a quoted name, a dollar-quoted string and a comment. Only CAST(:label ...) is bound.
SELECT CAST(:label AS text) AS label,
       '7'::integer AS cast_value,
       make_interval(days := 2) AS named_arg,
       'a :label in a string' AS quoted,
       $$:label$$ AS dollar,
       1 AS ":label" -- :label in a comment
