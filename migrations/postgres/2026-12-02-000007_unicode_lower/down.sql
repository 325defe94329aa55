DROP FUNCTION swapcast_lower(text);
